"""SyncBatchNorm: batch norm whose training statistics span every rank's shard.

With per-replica batch norm each rank normalises its 64 images by their own
mean and variance; the 2 x 64 run is then a different model from the 1 x 128
run.  SyncBatchNorm makes the two the same computation:

forward  every rank computes its shard's count n_r, mean m_r and centred sum
         of squares M2_r per channel, and one allgather shares them.  Each rank
         combines them in the same order (Chan et al.'s parallel variance,
         as torch's batch_norm_gather_stats_with_counts does):
             n = sum n_r,  mean = sum n_r m_r / n,
             M2 = sum (M2_r + n_r (m_r - mean)^2),  var = M2 / n.
         Summing raw sums of squares instead (E[x^2] - mean^2) would cancel
         badly in float32 when |mean| >> std.  The combination runs in float64:
         it is 2C+1 numbers, and counts past 2^24 stay exact.
backward the input gradient needs sum(dy) and sum(dy * (x - mean)) over the
         whole global batch: one allreduce of 2C numbers, then
             dx = a*dy + b*(x - mean) + c   (functional/norm.py's formula, with
         the global sums and the global n).  dweight and dbias stay the
         LOCAL sums: they are this rank's share, and the gradient allreduce
         adds the shares up.

This relies on every rank's dy being a gradient of ONE global objective
(the trainer scales each rank's loss gradient by n_r / n before backward).
Running statistics are updated from the global mean and the unbiased global
variance (var * n / (n - 1)), as torch's SyncBatchNorm does; they are then
identical on every rank.  Eval mode, or a world of one rank, is plain batch norm.
"""
import numpy as np

from ..backend import get_array_module
from ..nn.functional.norm import (BatchNormCache, _channel_dot, _channel_sum,
                                  batch_norm_backward)
from ..nn.norm import _BatchNorm


class SyncBatchNormCache:
    """A training forward's BatchNormCache plus the global element count."""
    __slots__ = ("bn", "count")

    def __init__(self, bn, count):
        self.bn, self.count = bn, count


class SyncBatchNorm(_BatchNorm):
    """torch.nn.SyncBatchNorm: batch norm over (N, C), (N, C, L) or (N, C, H, W)
    with statistics over the shards of all ranks of ``comm`` in training.
    ``comm`` (torch's ``process_group``) is an MPIComm or NCCLComm; None
    means a single process (plain batch norm)."""

    _input_ndims = (2, 3, 4)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias=bias)
        self.process_group = process_group

    def _synced(self):
        return (self.training and self.process_group is not None
                and self.process_group.world_size > 1)

    def forward(self, x):
        if not self._synced():
            return super().forward(x)
        self._check(x)
        comm, c = self.process_group, self.num_features
        xp = get_array_module(x)
        x3 = x.reshape(x.shape[0], x.shape[1], -1)
        n_local = x3.shape[0] * x3.shape[2]
        # this shard's count, mean and centred sum of squares (two passes, as the op)
        mean_local = _channel_sum(x3) * (1.0 / max(n_local, 1))
        centred = x3 - mean_local[:, None]
        stats = xp.empty(2 * c + 1, dtype=np.float64)
        stats[0] = n_local
        stats[1:c + 1] = mean_local
        stats[c + 1:] = _channel_dot(centred, centred)
        every = comm.allgather(stats, what=f"{self._name()}({c}) forward statistics")
        counts, means, m2s = every[:, :1], every[:, 1:c + 1], every[:, c + 1:]
        n = int(round(float(counts.sum())))
        if n <= 1:
            raise ValueError(f"{self._name()}: Expected more than 1 value per channel when "
                             f"training, got {n} over all ranks (input size {tuple(x.shape)})")
        mean64 = (counts * means).sum(axis=0) / n
        var64 = (m2s + counts * (means - mean64) ** 2).sum(axis=0) / n
        mean, var = mean64.astype(x.dtype), var64.astype(x.dtype)

        weight = self.weight.data if self.weight is not None else None
        bias = self.bias.data if self.bias is not None else None
        x_centered = x3 - mean[:, None]
        inv_std = 1.0 / (var + self.eps) ** 0.5
        scale = inv_std if weight is None else weight * inv_std
        y3 = x_centered * scale[:, None]
        if bias is not None:
            y3 += bias[:, None]
        cache = BatchNormCache(True, x3, inv_std, weight, bias is not None, mean, var)
        if self.track_running_stats:
            self._update_running_stats(cache, n)
        y = y3.reshape(x.shape)
        self._save(y, SyncBatchNormCache(cache, n))
        return y

    def backward(self, dy):
        entry = self._restore(dy)
        dy3 = dy.reshape(dy.shape[0], dy.shape[1], -1)
        if isinstance(entry, SyncBatchNormCache):
            dx3, dweight, dbias = self._synced_backward(dy3, entry.bn, entry.count)
        else:  # a forward that ran unsynchronised (one rank): the plain op
            dx3, dweight, dbias = batch_norm_backward(dy3, entry)
        if self.weight is not None:
            self.weight.accumulate(dweight)
        if self.bias is not None:
            self.bias.accumulate(dbias)
        return dx3.reshape(dy.shape)

    def _synced_backward(self, dy3, cache, n):
        xp = get_array_module(dy3)
        c = self.num_features
        inv_std, weight = cache.inv_std, cache.weight
        x_centered = cache.x_saved - cache.mean[:, None]
        sums = xp.empty(2 * c, dtype=dy3.dtype)
        sums[:c] = _channel_sum(dy3)
        sums[c:] = _channel_dot(dy3, x_centered)
        local_dbias = sums[:c].copy()
        local_dweight = sums[c:] * inv_std
        self.process_group.allreduce_(sums, what=f"{self._name()}({c}) backward sums")
        sum_dy, sum_dy_xc = sums[:c], sums[c:]
        a = inv_std if weight is None else weight * inv_std
        b = a * inv_std * (sum_dy_xc * inv_std) * (-1.0 / n)
        off = a * sum_dy * (-1.0 / n)
        dx = dy3 * a[:, None]
        dx += x_centered * b[:, None]
        dx += off[:, None]
        return (dx, local_dweight if weight is not None else None,
                local_dbias if cache.has_bias else None)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        return convert_sync_batchnorm(module, process_group)


def convert_sync_batchnorm(module, process_group=None):
    """Replace every BatchNorm layer in ``module`` by a SyncBatchNorm over
    ``process_group`` (torch's ``nn.SyncBatchNorm.convert_sync_batchnorm``).
    The new layers SHARE the old ones' Parameters and buffers (so an optimiser
    built before still updates them) and keep the state_dict keys.  Returns
    the converted module (a new object only if ``module`` itself was a BatchNorm)."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group,
                            bias=module.bias is not None)
        if module.weight is not None:
            out.weight = module.weight
        if module.bias is not None:
            out.bias = module.bias
        if module.track_running_stats:
            for name, buf in module.named_buffers():
                out.register_buffer(name, buf)
        out.train(module.training)
    elif isinstance(module, SyncBatchNorm) and process_group is not None:
        module.process_group = process_group
    for name, child in list(module.named_children()):
        new = convert_sync_batchnorm(child, process_group)
        if new is not child:
            setattr(out, name, new)
    return out
