"""2-D convolution as plain index arithmetic: the version to read.

``conv.py`` computes the same thing fast (im2col, or shifted products for
stride 1); the tests hold both to this one, and this one to torch.
"""
from ..checks import pair
from ...backend import get_array_module
from .conv import conv_output_size, conv_padding


def conv2d_reference(x, weight, stride=1, padding=0, dilation=1):
    """The same convolution (one group, no bias) as plain index arithmetic, for
    reading: one einsum per kernel offset.  Returns (y, backward) where
    ``backward(dy) -> (dx, dW)``.  Slow; the tests check ``conv.py``'s fast
    paths against it."""
    xp = get_array_module(x, weight)
    (sh, sw), (dil_h, dil_w) = pair(stride, "stride"), pair(dilation, "dilation")
    top, bottom, left, right = conv_padding(padding, weight.shape[2:], (dil_h, dil_w))
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    oh, ow = conv_output_size("conv2d_reference", (h, w), (kh, kw), (sh, sw),
                              (top, bottom, left, right), (dil_h, dil_w))
    x_pad = xp.zeros((n, c, h + top + bottom, w + left + right), dtype=x.dtype)
    x_pad[:, :, top:top + h, left:left + w] = x

    def window(a, ky, kx):  # a[n, c, oy*sh + ky*dil_h, ox*sw + kx*dil_w] for every (oy, ox)
        return a[:, :, ky * dil_h:ky * dil_h + sh * oh:sh, kx * dil_w:kx * dil_w + sw * ow:sw]

    # y[n, o, oy, ox] = sum over c, ky, kx of W[o, c, ky, kx] * x_pad[n, c, oy*sh + ky*dil_h, ...]
    y = sum(xp.einsum("oc,ncij->noij", weight[:, :, ky, kx], window(x_pad, ky, kx))
            for ky in range(kh) for kx in range(kw))

    def backward(dy):
        dw = xp.zeros_like(weight)
        dx_pad = xp.zeros_like(x_pad)
        for ky in range(kh):
            for kx in range(kw):
                dw[:, :, ky, kx] = xp.einsum("noij,ncij->oc", dy, window(x_pad, ky, kx))
                window(dx_pad, ky, kx)[...] += xp.einsum("oc,noij->ncij", weight[:, :, ky, kx], dy)
        return dx_pad[:, :, top:top + h, left:left + w], dw
    return y, backward
