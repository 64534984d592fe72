"""BatchNorm1d and BatchNorm2d (torch.nn names, arguments, buffers and repr).

Both reshape their input to (N, C, M) and share the op in
functional/norm.py.  Training normalises with the batch's statistics and
updates the running averages (unbiased variance, like torch); eval uses the
running averages, unless the layer tracks none (then always the batch's).
"""
import contextlib

from .. import backend
from .checks import check_input, whole
from .functional import reference_mode
from .functional.norm import batch_norm_forward, batch_norm_backward
from .init import DEFAULT_DTYPE
from .module import Module, Parameter


class _BatchNorm(Module):
    _input_ndims = ()  # set by subclasses

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, bias=True):
        super().__init__()
        self.num_features = whole(num_features, f"{type(self).__name__}: num_features")
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        # Parameters are created on the host; module.to(...) moves/casts them.
        xp = backend.get_array_module()
        c = self.num_features
        self.weight = Parameter(xp.ones(c, dtype=DEFAULT_DTYPE)) if affine else None
        self.bias = Parameter(xp.zeros(c, dtype=DEFAULT_DTYPE)) if affine and bias else None
        if track_running_stats:
            # Registered in torch's order: running_mean, running_var, num_batches_tracked.
            self.register_buffer("running_mean", xp.zeros(c, dtype=DEFAULT_DTYPE))
            self.register_buffer("running_var", xp.ones(c, dtype=DEFAULT_DTYPE))
            self.register_buffer("num_batches_tracked", xp.zeros((), dtype="int64"))
        else:
            # torch keeps these attributes as None, outside the state_dict.
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def _check(self, x):
        # dtype/backend reference: a parameter, else a buffer, else nothing to match
        like = self.weight.data if self.weight is not None else self.running_mean
        check_input(self._name(), x, self._input_ndims, channels=self.num_features, like=like)

    def forward(self, x, relu=False):
        """Batch norm of x; ``relu=True`` returns relu(batch_norm(x)) made in
        the same pass over memory (``backward`` then undoes both: see
        ``fused_bn_relu``)."""
        self._check(x)
        x3 = x.reshape(x.shape[0], x.shape[1], -1)  # (N, C, M): a view when contiguous
        use_batch_stats = self.training or self.running_mean is None
        n = x3.shape[0] * x3.shape[2]
        if n == 0:
            raise ValueError(f"{self._name()}: expected a non-empty input, got input size "
                             f"{tuple(x.shape)}")
        if use_batch_stats and n == 1:
            raise ValueError(f"{self._name()}: Expected more than 1 value per channel when "
                             f"training, got input size {tuple(x.shape)}")
        weight = self.weight.data if self.weight is not None else None
        bias = self.bias.data if self.bias is not None else None
        if use_batch_stats:
            y3, cache = batch_norm_forward(x3, weight, bias, self.eps, relu=relu)
        else:
            y3, cache = batch_norm_forward(x3, weight, bias, self.eps,
                                           self.running_mean, self.running_var, relu=relu)
        if self.training and self.track_running_stats:
            self._update_running_stats(cache, n)
        y = y3.reshape(x.shape)
        self._save(y, cache)
        return y

    def _update_running_stats(self, cache, n):
        self.num_batches_tracked += 1  # in place: the 0-d buffer stays the same array
        if self.momentum is None:
            # Cumulative moving average, exactly torch's factor (reads the
            # counter on the host; only in this mode).
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        # In place: running = (1 - factor)*running + factor*batch, with the
        # UNBIASED batch variance (x n/(n-1)) for running_var, as torch does.
        keep = 1.0 - factor
        self.running_mean *= keep
        self.running_mean += cache.mean * factor
        self.running_var *= keep
        self.running_var += cache.var * (factor * n / (n - 1))

    def backward(self, dy):
        cache = self._restore(dy)
        dy3 = dy.reshape(dy.shape[0], dy.shape[1], -1)
        dx3, dweight, dbias = batch_norm_backward(dy3, cache)
        if self.weight is not None:
            self.weight.accumulate(dweight)
        if self.bias is not None:
            self.bias.accumulate(dbias)
        return dx3.reshape(dy.shape)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")


_fusing = [True]


@contextlib.contextmanager
def unfused():
    """Inside this block ``fused_bn_relu`` makes two module calls, bn then relu,
    as the unfused model would: ``summary`` lists every ReLU call, as torch's
    tools do.  The numbers are the same either way."""
    _fusing.append(False)
    try:
        yield
    finally:
        _fusing.pop()


def _fused_last(bn):
    """True when bn's newest forward applied the ReLU itself (relu=True)."""
    if not bn._caches:
        return False
    cache = bn._caches[-1][-1]
    cache = getattr(cache, "bn", cache)  # SyncBatchNorm wraps the op's cache
    return getattr(cache, "relu_mask", None) is not None


def fused_bn_relu(bn, relu, x):
    """relu(bn(x)), in one pass over memory when ``bn`` is a batch norm.

    The models' blocks call this where a ReLU follows a batch norm; their
    backward calls ``fused_bn_relu_backward`` with the same modules.  The
    numbers are the same bits as ``relu(bn(x))`` (tests/nn/test_fused_bn_relu.py):
    the ReLU runs on each chunk of the batch norm's output while it is still
    in the cache, instead of in a pass of its own that reads and writes the
    whole activation again (and likewise backward).  Any other module in
    ``bn``'s place (a user's replacement) runs as two calls, and so does
    everything in ``minires.nn.functional.reference()`` mode."""
    if isinstance(bn, _BatchNorm) and _fusing[-1] and not reference_mode.on():
        return bn(x, relu=True)
    return relu(bn(x))


def fused_bn_relu_backward(bn, relu, dy):
    """The backward of ``fused_bn_relu(bn, relu, x)``: dL/dx from dL/d(output)."""
    if isinstance(bn, _BatchNorm) and _fused_last(bn):
        return bn.backward(dy)  # the ReLU's mask is in bn's cache
    return bn.backward(relu.backward(dy))


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) inputs, per channel C."""
    _input_ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) inputs, per channel C."""
    _input_ndims = (4,)
