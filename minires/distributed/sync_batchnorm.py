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

from ..backend import get_array_module, to_numpy
from ..nn.functional.norm import (batch_norm_backward, batch_norm_forward, combine_moments,
                                  moments)
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

    def forward(self, x, relu=False):
        if not self._synced():
            return super().forward(x, relu=relu)
        self._check(x)
        comm, c = self.process_group, self.num_features
        x3 = x.reshape(x.shape[0], x.shape[1], -1)
        # this shard's count, mean and centred sum of squares (the op's own), then
        # the shards' combined in rank order by the op's formula, in float64
        n_local, mean_local, m2_local = moments(x3)
        stats = np.empty(2 * c + 1, dtype=np.float64)
        stats[0] = n_local
        stats[1:c + 1] = to_numpy(mean_local)
        stats[c + 1:] = to_numpy(m2_local)
        every = comm.allgather(stats, what=f"{self._name()}({c}) forward statistics")
        n, mean64, m2_64 = combine_moments([(float(r[0]), r[1:c + 1], r[c + 1:]) for r in every])
        n = int(round(n))
        if n <= 1:
            raise ValueError(f"{self._name()}: Expected more than 1 value per channel when "
                             f"training, got {n} over all ranks (input size {tuple(x.shape)})")
        xp = get_array_module(x)
        mean = xp.asarray(mean64, dtype=x.dtype)
        var = xp.asarray(m2_64 / n, dtype=x.dtype)
        weight = self.weight.data if self.weight is not None else None
        bias = self.bias.data if self.bias is not None else None
        y3, cache = batch_norm_forward(x3, weight, bias, self.eps, batch_mean_var=(mean, var),
                                       relu=relu)
        if self.track_running_stats:
            self._update_running_stats(cache, n)
        y = y3.reshape(x.shape)
        self._save(y, SyncBatchNormCache(cache, n))
        return y

    def backward(self, dy):
        entry = self._restore(dy)
        dy3 = dy.reshape(dy.shape[0], dy.shape[1], -1)
        if isinstance(entry, SyncBatchNormCache):
            c = self.num_features

            def global_sums(sum_dy, sum_dy_xc):  # one allreduce of 2C numbers
                sums = get_array_module(dy3).concatenate([sum_dy, sum_dy_xc])
                self.process_group.allreduce_(sums, what=f"{self._name()}({c}) backward sums")
                return sums[:c], sums[c:]
            dx3, dweight, dbias = batch_norm_backward(dy3, entry.bn, n=entry.count,
                                                      reduce_sums=global_sums)
        else:  # a forward that ran unsynchronised (one rank): the plain op
            dx3, dweight, dbias = batch_norm_backward(dy3, entry)
        if self.weight is not None:
            self.weight.accumulate(dweight)
        if self.bias is not None:
            self.bias.accumulate(dbias)
        return dx3.reshape(dy.shape)

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
