"""im2col and col2im as single CUDA kernels (twins: minires.nn.functional.conv).

Both use conv.py's column layout col[n, c, ky, kx, oy, ox]; padding is
(top, bottom, left, right).  Each thread handles one output element and works
out its indices, so a padded copy of the input is never made.
"""
import functools

from ..backend import cupy_or_none

_IM2COL = r"""
    const long long ox = i % ow;   long long t = i / ow;
    const long long oy = t % oh;   t /= oh;
    const long long kx = t % kw;   t /= kw;
    const long long ky = t % kh;   t /= kh;
    const long long ch = t % c;
    const long long b = t / c;
    const long long iy = oy * sy - pt + ky * dil_y;
    const long long ix = ox * sx - pl + kx * dil_x;
    col = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? img[((b * c + ch) * h + iy) * w + ix]
                                                   : (T)0;
"""

# One thread per input pixel: sum, in the twin's order (ky, then kx), every
# column entry that im2col copied from this pixel.  A pixel is read by offset
# (ky, kx) when y + pt - ky*dil_y is a non-negative multiple of sy below oh*sy
# (and the same along x).
_COL2IM = r"""
    const long long x = i % w;     long long t = i / w;
    const long long y = t % h;     t /= h;
    const long long ch = t % c;
    const long long b = t / c;
    T acc = (T)0;
    for (long long ky = 0; ky < kh; ++ky) {
        const long long ty = y + pt - ky * dil_y;
        if (ty < 0 || ty % sy != 0) continue;
        const long long oy = ty / sy;
        if (oy >= oh) continue;
        for (long long kx = 0; kx < kw; ++kx) {
            const long long tx = x + pl - kx * dil_x;
            if (tx < 0 || tx % sx != 0) continue;
            const long long ox = tx / sx;
            if (ox >= ow) continue;
            acc += col[((((b * c + ch) * kh + ky) * kw + kx) * oh + oy) * ow + ox];
        }
    }
    img = acc;
"""

_PARAMS = ("int64 n, int64 c, int64 h, int64 w, int64 kh, int64 kw, int64 oh, int64 ow, "
           "int64 sy, int64 sx, int64 pt, int64 pl, int64 dil_y, int64 dil_x")


# (in, out) parameters of each kernel (tests/test_kernel_sources.py compiles the
# same bodies as C++ on the CPU)
IM2COL_SIGNATURE = ("raw T img, " + _PARAMS, "T col")
COL2IM_SIGNATURE = ("raw T col, " + _PARAMS, "T img")


@functools.lru_cache(maxsize=None)
def _kernels():
    cp = cupy_or_none()
    im2col = cp.ElementwiseKernel(*IM2COL_SIGNATURE, _IM2COL, "minires_im2col")
    col2im = cp.ElementwiseKernel(*COL2IM_SIGNATURE, _COL2IM, "minires_col2im")
    return im2col, col2im


def im2col(x, kernel_size, stride, padding, dilation, out_hw, out=None):
    """Twin of ``minires.nn.functional.conv.im2col`` for a CuPy array x (N, C, H, W)."""
    cp = cupy_or_none()
    n, c, h, w = x.shape
    (kh, kw), (sy, sx), (dil_y, dil_x), (oh, ow) = kernel_size, stride, dilation, out_hw
    top, _, left, _ = padding
    col = cp.empty((n, c, kh, kw, oh, ow), dtype=x.dtype) if out is None else out
    _kernels()[0](cp.ascontiguousarray(x), n, c, h, w, kh, kw, oh, ow, sy, sx, top, left,
                  dil_y, dil_x, col)
    return col


def col2im(col, x_shape, stride, padding, dilation):
    """Twin of ``minires.nn.functional.conv.col2im``: (N, C, kh, kw, oh, ow) -> NCHW."""
    cp = cupy_or_none()
    n, c, kh, kw, oh, ow = col.shape
    _, _, h, w = x_shape
    (sy, sx), (dil_y, dil_x) = stride, dilation
    top, _, left, _ = padding
    img = cp.empty((n, c, h, w), dtype=col.dtype)
    _kernels()[1](cp.ascontiguousarray(col), n, c, h, w, kh, kw, oh, ow, sy, sx, top, left,
                  dil_y, dil_x, img)
    return img
