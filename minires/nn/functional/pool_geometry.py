"""Pooling geometry, torch's rules: output sizes, argument checks, adaptive bins.

The output size is ``floor((H + 2p - d(k-1) - 1 [+ s-1 when ceil]) / s) + 1``,
and with ceil_mode a last window that would start past the input's right
edge (in the right padding) is dropped.  Shared by ``pool.py`` and
``reference_ops.py``.
"""
from ..checks import pair


def pool_output_size(size, kernel, stride, padding, dilation=1, ceil_mode=False):
    """One axis's output length, torch's ``pooling_output_shape``.  May be < 1."""
    span = dilation * (kernel - 1) + 1
    extra = stride - 1 if ceil_mode else 0
    out = (size + 2 * padding - span + extra) // stride + 1
    # ceil_mode may add a window; torch keeps it only when it starts inside the
    # input or the left padding, never in the right padding.
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def pool_geometry(layer, shape, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    """Normalise the arguments to pairs, validate them against torch's rules and
    the input ``shape`` (N, C, H, W), and return ``(k, s, p, d, (OH, OW))``.

    Every error is a ValueError that names ``layer``."""
    k = pair(kernel_size, "kernel_size")
    s = k if stride is None else pair(stride, "stride")
    p = pair(padding, "padding")
    d = pair(dilation, "dilation")
    check_pool_args(layer, k, s, p, d)
    H, W = shape[-2], shape[-1]
    oh = pool_output_size(H, k[0], s[0], p[0], d[0], ceil_mode)
    ow = pool_output_size(W, k[1], s[1], p[1], d[1], ceil_mode)
    if oh < 1 or ow < 1:
        dil = f", dilation={d}" if d != (1, 1) else ""
        raise ValueError(
            f"{layer}: kernel_size={k}{dil} is larger than the padded input: input shape "
            f"{tuple(shape)} with padding={p} is {H + 2 * p[0]}x{W + 2 * p[1]}, giving an "
            f"output of {oh}x{ow}; use a smaller kernel or a larger input")
    return k, s, p, d, (oh, ow)


def check_pool_args(layer, k, s, p, d=(1, 1)):
    """torch's argument rules, as ValueErrors naming ``layer``."""
    if min(k) < 1 or min(s) < 1 or min(d) < 1:
        raise ValueError(f"{layer}: kernel_size, stride and dilation must be positive, "
                         f"got kernel_size={k}, stride={s}, dilation={d}")
    if min(p) < 0:
        raise ValueError(f"{layer}: padding must be non-negative, got padding={p}")
    # torch: "pad should be at most half of kernel size" (kernel_size // 2, the raw
    # kernel even when dilated), so a window never lies wholly in the padding.
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{layer}: padding should be at most half of kernel_size "
                         f"(padding <= kernel_size // 2), got padding={p}, kernel_size={k}")



def adaptive_output_size(layer, shape, output_size):
    """(OH, OW) from an int, a pair, or a pair with None ("keep that size")."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"{layer}: output_size must be an int or a pair, "
                             f"got {output_size!r}")
        oh, ow = output_size
    else:
        oh = ow = output_size
    oh = shape[-2] if oh is None else int(oh)
    ow = shape[-1] if ow is None else int(ow)
    if oh < 1 or ow < 1:
        raise ValueError(f"{layer}: output_size must be positive, got {output_size!r}")
    return oh, ow


def adaptive_bins(size, out):
    """torch's bins [floor(i*size/out), ceil((i+1)*size/out)); they may overlap."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]
