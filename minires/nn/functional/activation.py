"""ReLU, LeakyReLU and dropout, forward and backward side by side.

ReLU's two passes run in batch chunks on all cores (``minires.parallel``);
elementwise, so the result is the same on any thread count."""
from ...backend import get_array_module
from ... import parallel
from . import reference_mode, reference_ops


def relu_forward(x):
    """``y = max(x, 0)`` and the mask ``x > 0`` for backward (the gradient at
    exactly 0 is 0, as in torch); chunks of the batch run on the thread pool."""
    if reference_mode.on():
        return reference_ops.relu_forward(x)
    xp = get_array_module(x)
    mask = xp.empty(x.shape, dtype=bool)
    y = xp.empty_like(x)

    def one(s):
        xp.greater(x[s], 0, out=mask[s])  # the gradient at exactly 0 is 0, as in torch
        xp.maximum(x[s], 0, out=y[s])  # not x * mask: -inf * 0 would be NaN (torch gives 0)
    parallel.map_chunks(one, parallel.batch_slices(x), like=x)
    return y, mask


def relu_backward(dy, mask):
    """``dx = dy * mask``: the gradient passes where the input was positive."""
    if reference_ops.owns(mask):
        return reference_ops.relu_backward(dy, mask)
    xp = get_array_module(dy)
    dx = xp.empty_like(dy)
    parallel.map_chunks(lambda s: xp.multiply(dy[s], mask[s], out=dx[s]),
                        parallel.batch_slices(dy), like=dy)
    return dx


def leaky_relu_forward(x, negative_slope):
    """x where x > 0, else negative_slope * x.  The mask is kept for backward;
    at exactly 0 the slope is negative_slope, as in torch."""
    xp = get_array_module(x)
    mask = x > 0
    # the slope as x's scalar type: a Python float would not upcast, but a
    # float64 NumPy scalar from a caller would
    return xp.where(mask, x, x * x.dtype.type(negative_slope)), mask


def leaky_relu_backward(dy, mask, negative_slope):
    """``dx = dy`` where the input was positive, else ``negative_slope * dy``."""
    xp = get_array_module(dy)
    return xp.where(mask, dy, dy * dy.dtype.type(negative_slope))


def dropout_forward(x, p, uniform_draw):
    """Inverted dropout: keep each value with probability 1-p and scale by
    1/(1-p), so eval mode is the identity.  ``uniform_draw`` is an array of
    U[0,1) draws shaped like x (drawn by the caller from a seeded stream)."""
    if p >= 1.0:
        scale_mask = x * 0
    else:
        xp_mask = uniform_draw >= p
        scale_mask = xp_mask.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
    return x * scale_mask, scale_mask


def dropout_backward(dy, scale_mask):
    """``dx = dy * scale_mask``: the kept values' gradients, scaled by 1/(1-p)."""
    return dy * scale_mask
