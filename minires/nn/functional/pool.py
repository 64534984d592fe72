"""Pooling ops: max, average and adaptive average over the last two axes (NCHW).

Max and average pooling loop over the kernel offsets (kh*kw iterations, each a
whole-batch strided slice of the padded input), never over output pixels or the
batch: Chainer's trick.  The backward passes mirror that loop with strided-slice
``+=``, which is how overlapping windows (stride < kernel) accumulate without
``np.add.at``.

Geometry follows torch exactly, including ``ceil_mode`` (``pool_geometry.py``).
"""
from ...backend import get_array_module
from ... import parallel
from . import reference_mode, reference_ops
from .pool_geometry import adaptive_bins, adaptive_output_size, pool_geometry


def _padded(x, p, needed, fill):
    """``x`` inside a buffer filled with ``fill``: ``p`` on the top/left, and on the
    bottom/right enough for ``needed`` = (rows, cols) the windows reach (ceil_mode
    may need more than ``p``).  Returns ``x`` itself when no padding is needed."""
    xp_ = _xp(x)
    N, C, H, W = x.shape
    Hp, Wp = max(H + 2 * p[0], needed[0]), max(W + 2 * p[1], needed[1])
    if p == (0, 0) and Hp == H and Wp == W:
        return x
    buf = xp_.full((N, C, Hp, Wp), fill, dtype=x.dtype)
    buf[:, :, p[0]:p[0] + H, p[1]:p[1] + W] = x
    return buf


def _window_slice(i, j, k_dilation, s, out):
    """The strided slice of the padded input that kernel offset (i, j) sees for
    every output pixel at once."""
    di, dj = k_dilation
    r0, c0 = i * di, j * dj
    return (slice(None), slice(None),
            slice(r0, r0 + s[0] * (out[0] - 1) + 1, s[0]),
            slice(c0, c0 + s[1] * (out[1] - 1) + 1, s[1]))


def _reach(k, s, d, out):
    """Rows and columns of the padded input that the windows touch."""
    return (s[0] * (out[0] - 1) + d[0] * (k[0] - 1) + 1,
            s[1] * (out[1] - 1) + d[1] * (k[1] - 1) + 1)


def _xp(x):
    return get_array_module(x)


# ---------------------------------------------------------------- max pooling

def maxpool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max over each window; padding counts as -inf.  The cache keeps, per output,
    which kernel offset won (the first in row-major offset order on ties), so
    each output's gradient goes to exactly one input.  (A dilated window can miss
    the input entirely: its output is -inf, as in torch, and its gradient lands in
    the padding and is dropped.)

    The batch runs in chunks on all cores (``minires.parallel``), each chunk's
    whole offset loop while it is in the cache; per-pixel results, so any
    thread count gives the same bits."""
    if reference_mode.on():
        return reference_ops.maxpool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode)
    xp = _xp(x)
    k, s, p, d, out = pool_geometry("maxpool2d_forward", x.shape, kernel_size, stride,
                                    padding, dilation, ceil_mode)
    reach = _reach(k, s, d, out)
    n_offsets = k[0] * k[1]
    idx_dtype = xp.int8 if n_offsets <= 127 else xp.int32  # offset ids; int8 saves memory
    y = xp.empty(x.shape[:2] + out, dtype=x.dtype)
    argmax = xp.empty(y.shape, dtype=idx_dtype)

    def one(b):
        xpad = _padded(x[b], p, reach, -float("inf"))
        yb, ab = y[b], argmax[b]
        yb[...] = xpad[_window_slice(0, 0, d, s, out)]
        ab[...] = 0
        better = xp.empty(yb.shape, dtype=bool)
        for off in range(1, n_offsets):
            window = xpad[_window_slice(off // k[1], off % k[1], d, s, out)]
            # strict '>' keeps the earliest offset on ties: deterministic, one winner
            xp.greater(window, yb, out=better)
            xp.copyto(yb, window, where=better)
            xp.copyto(ab, idx_dtype(off), where=better)
    parallel.map_chunks(one, parallel.batch_slices(x), like=x)
    H, W = x.shape[-2:]
    pad_shape = x.shape[:2] + (max(H + 2 * p[0], reach[0]), max(W + 2 * p[1], reach[1]))
    cache = (argmax, x.shape, pad_shape, k, s, p, d)
    return y, cache


def maxpool2d_backward(dy, cache):
    """dx: each dy goes to its window's argmax, summed where windows overlap."""
    if reference_ops.owns(cache):
        return reference_ops.maxpool2d_backward(dy, cache)
    xp = _xp(dy)
    argmax, x_shape, pad_shape, k, s, p, d = cache
    out = dy.shape[-2:]
    H, W = x_shape[-2:]
    dx = xp.empty(x_shape, dtype=dy.dtype)

    def one(b):
        dxpad = xp.zeros((dy[b].shape[0],) + tuple(pad_shape[1:]), dtype=dy.dtype)
        for off in range(k[0] * k[1]):
            # dy where this offset won, 0 elsewhere: one strided-slice add per offset
            dxpad[_window_slice(off // k[1], off % k[1], d, s, out)] += dy[b] * (argmax[b] == off)
        dx[b] = dxpad[:, :, p[0]:p[0] + H, p[1]:p[1] + W]
    parallel.map_chunks(one, parallel.batch_slices(dx), like=dy)
    return dx


# ---------------------------------------------------------------- average pooling

def _avg_divisor_1d(size, kernel, stride, padding, out, count_include_pad):
    """Per-output divisor along one axis, torch's rule: the window clipped to the
    padded input [-p, size+p) when counting the padding (so ceil_mode's overhang
    past the padding is never counted), or to the input [0, size) when not."""
    counts = []
    for o in range(out):
        start = o * stride - padding
        end = min(start + kernel, size + padding)
        if not count_include_pad:
            start, end = max(start, 0), min(end, size)
        counts.append(end - start)
    return counts


def avgpool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                      count_include_pad=True, divisor_override=None):
    """Mean over each window (torch.nn.functional.avg_pool2d)."""
    if reference_mode.on():
        return reference_ops.avgpool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                                 divisor_override)
    xp = _xp(x)
    k, s, p, d, out = pool_geometry("avgpool2d_forward", x.shape, kernel_size, stride,
                                    padding, 1, ceil_mode)
    H, W = x.shape[-2:]
    xpad = _padded(x, p, _reach(k, s, d, out), 0)
    y = xpad[_window_slice(0, 0, d, s, out)].copy()
    for off in range(1, k[0] * k[1]):
        y += xpad[_window_slice(off // k[1], off % k[1], d, s, out)]
    divisor = _avg_divisor(xp, x.dtype, (H, W), k, s, p, out, count_include_pad,
                           divisor_override)
    y /= divisor
    return y, (divisor, x.shape, xpad.shape, k, s, p)


def _avg_divisor(xp, dtype, size, k, s, p, out, count_include_pad, divisor_override):
    """(OH, OW) divisors (a scalar with divisor_override); separable, since each
    window is a rectangle, so it is the outer product of the two axes' counts."""
    if divisor_override is not None:
        return dtype.type(divisor_override)
    rows = _avg_divisor_1d(size[0], k[0], s[0], p[0], out[0], count_include_pad)
    cols = _avg_divisor_1d(size[1], k[1], s[1], p[1], out[1], count_include_pad)
    return xp.asarray(rows, dtype=dtype)[:, None] * xp.asarray(cols, dtype=dtype)[None, :]


def avgpool2d_backward(dy, cache):
    """dx: each window's dy / divisor spread over its (in-input) positions."""
    if reference_ops.owns(cache):
        return reference_ops.avgpool2d_backward(dy, cache)
    xp = _xp(dy)
    divisor, x_shape, pad_shape, k, s, p = cache
    out = dy.shape[-2:]
    g = dy / divisor
    dxpad = xp.zeros(pad_shape, dtype=dy.dtype)
    for off in range(k[0] * k[1]):
        dxpad[_window_slice(off // k[1], off % k[1], (1, 1), s, out)] += g
    H, W = x_shape[-2:]
    return dxpad[:, :, p[0]:p[0] + H, p[1]:p[1] + W]


# ---------------------------------------------------------------- adaptive average

def adaptive_avgpool2d_forward(x, output_size):
    """torch.nn.functional.adaptive_avg_pool2d."""
    if reference_mode.on():
        return reference_ops.adaptive_avgpool2d_forward(x, output_size)
    xp = _xp(x)
    N, C, H, W = x.shape
    oh, ow = adaptive_output_size("adaptive_avgpool2d_forward", x.shape, output_size)
    if (oh, ow) == (1, 1):
        # global average pool (the ResNet head): one mean
        return x.mean(axis=(2, 3), keepdims=True), ("global", x.shape)
    if H % oh == 0 and W % ow == 0:
        # equal, disjoint bins: a reshape and one mean
        y = x.reshape(N, C, oh, H // oh, ow, W // ow).mean(axis=(3, 5))
        return y, ("blocks", x.shape)
    # General case, separable: a rectangle's mean is the mean over its rows of the
    # mean over its columns, so pool H then W (oh + ow slices, not oh*ow).
    t = x
    if oh != H:
        t = xp.stack([t[:, :, a:b, :].mean(axis=2) for a, b in adaptive_bins(H, oh)], axis=2)
    if ow != W:
        t = xp.stack([t[:, :, :, a:b].mean(axis=3) for a, b in adaptive_bins(W, ow)], axis=3)
    return t, ("bins", x.shape)


def adaptive_avgpool2d_backward(dy, cache):
    """dx of ``adaptive_avgpool2d_forward``: each output's gradient spread
    evenly over the input window it averaged."""
    if reference_ops.owns(cache):
        return reference_ops.adaptive_avgpool2d_backward(dy, cache)
    xp = _xp(dy)
    kind, (N, C, H, W) = cache
    oh, ow = dy.shape[-2:]
    if kind == "global":
        return xp.broadcast_to(dy / (H * W), (N, C, H, W)).copy()
    if kind == "blocks":
        kh, kw = H // oh, W // ow
        g = (dy / (kh * kw))[:, :, :, None, :, None]
        return xp.broadcast_to(g, (N, C, oh, kh, ow, kw)).reshape(N, C, H, W)
    # undo the W pass, then the H pass; bins overlap, so each accumulates
    g = dy
    if ow != W:
        gw = xp.zeros((N, C, g.shape[2], W), dtype=dy.dtype)
        for j, (a, b) in enumerate(adaptive_bins(W, ow)):
            gw[:, :, :, a:b] += g[:, :, :, j:j + 1] / (b - a)
        g = gw
    if oh != H:
        gh = xp.zeros((N, C, H, W), dtype=dy.dtype)
        for i, (a, b) in enumerate(adaptive_bins(H, oh)):
            gh[:, :, a:b, :] += g[:, :, i:i + 1, :] / (b - a)
        g = gh
    return g
