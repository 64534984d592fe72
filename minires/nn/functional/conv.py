"""2-D convolution, forward and backward: a short dispatcher over three paths.

* ``pointwise``: 1x1, stride 1, no padding.  A matrix product at every
  pixel, ``y[n] = W @ x[n]``, straight on the NCHW input: no copies at all.
* ``shifted_slices`` (``conv_shifted.py``): stride 1, one group, on the CPU.
  Products over shifted slices of the flat image, no im2col copy.
* ``phases`` (``conv_phases.py``): the stride-2 3x3 (padding 1) of a
  ResNet's downsampling block, on the CPU: the same products on the input's
  four even/odd phases.
* ``im2col`` (``conv_im2col.py``): everything else, and the GPU.

All four compute the same convolution; ``reference_ops.py`` has it as a few
plain lines, and the tests hold every path to it and to torch.  The cache
is a ``ConvCache`` whose ``path`` says which path made it; backward reads
it and leaves it as it was.  Why four paths: docs/performance.md.
"""
from collections import namedtuple

from ..checks import pair
from ...backend import get_array_module
from ... import parallel
from . import conv_phases, conv_shifted, reference_mode, reference_ops
from .conv_geometry import conv_output_size, conv_padding, dx_as_conv_padding
from .conv_im2col import batch_chunks, im2col_backward, im2col_forward, weight_from_t, weight_grad_t

ConvCache = namedtuple("ConvCache", ["path", "x", "weight", "has_bias", "stride", "padding",
                                     "dilation", "groups"])
ConvCache.__doc__ = """What conv2d_backward needs: the forward's inputs and arguments.

* ``path``: "pointwise", "shifted_slices", "phases" or "im2col", the path that ran and
  whose backward undoes it.
* ``x``: the input (N, C, H, W), not a copy: do not change it in place
  between forward and backward.
* ``weight``: (O, C/groups, kh, kw).
* ``has_bias``: whether db is wanted.
* ``stride``, ``padding`` (top, bottom, left, right), ``dilation``,
  ``groups``: as used.
"""


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """y = conv2d(x, weight) + bias, as torch.nn.functional.conv2d.

    x (N, C, H, W), weight (O, C/groups, kh, kw), bias (O,) or None; stride and
    dilation an int or a pair; padding an int, a pair, (top, bottom, left,
    right), "valid" or "same".  Returns ``(y, cache)`` with y (N, O, oh, ow)."""
    if reference_mode.on():
        return reference_ops.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)
    xp = get_array_module(x, weight)
    n, c, h, w = x.shape
    o, c_per_group, kh, kw = weight.shape
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    if padding == "same" and stride != (1, 1):
        raise ValueError(f"conv2d: padding='same' needs stride 1, got stride {stride}")
    pads = conv_padding(padding, (kh, kw), dilation)
    if c != c_per_group * groups:
        raise ValueError(f"conv2d: expected {c_per_group * groups} input channels "
                         f"(weight {tuple(weight.shape)}, groups={groups}), got shape {tuple(x.shape)}")
    oh, ow = conv_output_size("conv2d", (h, w), (kh, kw), stride, pads, dilation)
    y = xp.empty((n, o, oh, ow), dtype=x.dtype)

    if (kh, kw) == (1, 1) and stride == (1, 1) and pads == (0, 0, 0, 0):
        path = "pointwise"
        pointwise_forward(x, weight, bias, groups, y)
    elif xp.__name__ == "numpy" and dx_as_conv_padding(stride, groups, (kh, kw), dilation, pads):
        path = "shifted_slices"
        conv_shifted.shifted_slices_forward(x, weight, pads, dilation, y)
        if bias is not None:
            y += bias.reshape(1, o, 1, 1)
    elif xp.__name__ == "numpy" and conv_phases.applies(x.shape, weight.shape, stride, pads, dilation,
                                                        groups):
        path = "phases"
        conv_phases.phases_forward(x, weight, y)
        if bias is not None:
            y += bias.reshape(1, o, 1, 1)
    else:
        path = "im2col"
        im2col_forward(x, weight, bias, stride, pads, dilation, groups, y)
    return y, ConvCache(path, x, weight, bias is not None, stride, pads, dilation, groups)


def conv2d_backward(dy, cache):
    """Returns (dx, dW, db) for dy = dL/dy (N, O, oh, ow); db is None without a
    bias.  The path that made ``cache`` undoes it; the cache is not changed."""
    if reference_ops.owns(cache):
        return reference_ops.conv2d_backward(dy, cache)
    if cache.path == "pointwise":
        return pointwise_backward(dy, cache)
    if cache.path == "shifted_slices":
        return conv_shifted.shifted_slices_backward(dy, cache)
    if cache.path == "phases":
        return conv_phases.phases_backward(dy, cache)
    return im2col_backward(dy, cache)


# ---------------------------------------------------------------- the pointwise path

def pointwise_forward(x, weight, bias, groups, y):
    """y[n] = W @ x[n] (+ bias) for a 1x1 stride-1 convolution, per group, in
    batch chunks, written into ``y``."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    o, g = weight.shape[0], groups
    w_groups = weight.reshape(g, o // g, c // g)

    def one_chunk(s):
        x_mat = x[s].reshape(-1, g, c // g, h * w)
        xp.matmul(w_groups, x_mat, out=y[s].reshape(-1, g, o // g, h * w))
        if bias is not None:
            y[s] += bias.reshape(1, o, 1, 1)
    parallel.map_chunks(one_chunk, batch_chunks(xp, n, (c + o) * h * w * x.dtype.itemsize), like=x)
    return y


def pointwise_backward(dy, cache):
    """dx[n] = W^T @ dy[n],  dW = sum over images of dy[n] @ x[n]^T,  db = sum of dy."""
    xp = get_array_module(dy)
    x, weight, g = cache.x, cache.weight, cache.groups
    n, c, h, w = x.shape
    o = weight.shape[0]
    x_mat = x.reshape(n, g, c // g, h * w)
    w_t = weight.reshape(g, o // g, c // g).transpose(0, 2, 1)
    dx = xp.empty(x.shape, dtype=dy.dtype)

    def one_chunk(s):
        dy_mat = dy[s].reshape(-1, g, o // g, h * w)
        dw_t = weight_grad_t(xp, x_mat[s], dy_mat)  # (G, C/G, O/G)
        xp.matmul(w_t, dy_mat, out=dx[s].reshape(-1, g, c // g, h * w))
        return dw_t, (dy[s].sum(axis=(0, 2, 3)) if cache.has_bias else None)

    parts = parallel.map_chunks(one_chunk, batch_chunks(xp, n, (c + o) * h * w * dy.dtype.itemsize),
                                like=dy)
    dw = weight_from_t(parallel.sum_in_order([p[0] for p in parts]), weight.shape)
    db = parallel.sum_in_order([p[1] for p in parts]) if cache.has_bias else None
    return dx, dw, db
