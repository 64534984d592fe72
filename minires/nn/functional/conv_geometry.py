"""Shapes and paddings of a 2-D convolution: what every conv path agrees on.

Padding is (top, bottom, left, right) so that torch's asymmetric
``padding="same"`` (the extra row/column at the bottom/right) fits the same
code as symmetric padding.
"""
from ..checks import pair


def conv_padding(padding, kernel_size=None, dilation=(1, 1)):
    """Padding as (top, bottom, left, right) from an int, a pair (ph, pw), a
    4-tuple, "valid" or "same" (the last needs ``kernel_size``).

    For "same" the total padding is dilation*(k-1); when that is odd, torch puts
    the extra row/column at the bottom/right, and so do we."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            kh, kw = pair(kernel_size, "kernel_size")
            dil_h, dil_w = pair(dilation, "dilation")
            total_h, total_w = dil_h * (kh - 1), dil_w * (kw - 1)
            return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
        raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        pads = tuple(int(p) for p in padding)
    else:
        ph, pw = pair(padding, "padding")
        pads = (ph, ph, pw, pw)
    if min(pads) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return pads


def conv_output_size(layer, in_hw, kernel_size, stride, padding, dilation):
    """(oh, ow) of a convolution; a clear ValueError when the dilated kernel does
    not fit in the padded input (there would be no output pixel at all)."""
    (h, w), (kh, kw) = in_hw, kernel_size
    (sh, sw), (dil_h, dil_w) = stride, dilation
    top, bottom, left, right = padding
    padded = (h + top + bottom, w + left + right)
    dilated = (dil_h * (kh - 1) + 1, dil_w * (kw - 1) + 1)
    if padded[0] < dilated[0] or padded[1] < dilated[1]:
        raise ValueError(
            f"{layer}: the kernel (size {tuple(kernel_size)}, dilation {tuple(dilation)}, so "
            f"{dilated[0]}x{dilated[1]} pixels) is larger than the padded input "
            f"({padded[0]}x{padded[1]}: input {h}x{w} plus padding {tuple(padding)}); "
            f"expected a padded input of at least {dilated[0]}x{dilated[1]}")
    return (padded[0] - dilated[0]) // sh + 1, (padded[1] - dilated[1]) // sw + 1


def dx_as_conv_padding(stride, groups, kernel_size, dilation, padding):
    """Padding that makes dx a plain convolution of dy, or None.

    For stride 1 and one group, dx[n, c, p, q] = sum over o, ky, kx of
    W[o, c, ky, kx] * dy[n, o, p + top - d*ky, q + left - d*kx]: a convolution
    of dy, padded by d*(k-1) minus the forward padding on each side, with the
    kernel flipped and its in/out channels swapped.  Strides, groups and
    padding wider than the kernel have no such form (None)."""
    if stride != (1, 1) or groups != 1:
        return None
    (kh, kw), (dil_h, dil_w) = kernel_size, dilation
    top, bottom, left, right = padding
    pads = (dil_h * (kh - 1) - top, dil_h * (kh - 1) - bottom,
            dil_w * (kw - 1) - left, dil_w * (kw - 1) - right)
    return pads if min(pads) >= 0 else None
