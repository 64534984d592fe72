"""The im2col convolution path: every window copied into columns, then one product.

Chainer's ``utils/conv.py`` idea: copy every kh x kw window of the input
into a column buffer, so the convolution is a matrix product ``W @ col``;
the backward is the same product transposed, and ``col2im`` scatters the
column gradient back onto the input.  Layout of the column buffer:

    col[n, c, ky, kx, oy, ox] = x_padded[n, c, oy*sy + ky*dy, ox*sx + kx*dx]

so ``col[n]`` reshapes without a copy to a (C*kh*kw, oh*ow) matrix and
``y[n] = W @ col[n]`` writes straight into the NCHW output.  Groups add one
leading axis to the same batched products.  The cache keeps x, not col (9x
larger); backward rebuilds col.  Why each choice: docs/performance.md.

This path serves strided, grouped and GPU convolutions; ``conv.py``
dispatches to it.  Everything takes ``xp`` from its inputs, so it runs
unchanged on CuPy.
"""
from ..checks import pair
from ...backend import get_array_module
from ... import kernels, parallel
from . import workspace
from .conv_geometry import conv_output_size, conv_padding, dx_as_conv_padding


# ---------------------------------------------------------------- im2col / col2im

def im2col(x, kernel_size, stride=1, padding=0, dilation=1, out=None):
    """(N, C, H, W) -> col of shape (N, C, kh, kw, oh, ow), see the module doc.

    One allocation for ``col`` (or ``out``, of that shape and x's dtype) and a
    loop over the kh*kw kernel offsets: each offset copies a strided slice of
    the (padded) input, for all images, channels and output pixels at once."""
    xp = get_array_module(x)
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(stride, "stride")
    dil_h, dil_w = pair(dilation, "dilation")
    top, bottom, left, right = conv_padding(padding)
    n, c, h, w = x.shape
    oh, ow = conv_output_size("im2col", (h, w), (kh, kw), (sh, sw), (top, bottom, left, right),
                              (dil_h, dil_w))
    if kernels.use_for(x):  # one CUDA kernel instead of the loop below
        from ...kernels import conv as cuda_conv
        return cuda_conv.im2col(x, (kh, kw), (sh, sw), (top, bottom, left, right), (dil_h, dil_w),
                                (oh, ow), out)
    if top or bottom or left or right:
        padded = xp.zeros((n, c, h + top + bottom, w + left + right), dtype=x.dtype)
        padded[:, :, top:top + h, left:left + w] = x
    else:
        padded = x  # no padding: read the input itself, no copy

    col = xp.empty((n, c, kh, kw, oh, ow), dtype=x.dtype) if out is None else out
    for ky in range(kh):
        y0 = ky * dil_h
        for kx in range(kw):
            x0 = kx * dil_w
            col[:, :, ky, kx] = padded[:, :, y0:y0 + sh * oh:sh, x0:x0 + sw * ow:sw]
    return col


def col2im(col, x_shape, stride=1, padding=0, dilation=1, out=None):
    """The adjoint of ``im2col``: col (N, C, kh, kw, oh, ow) -> (N, C, H, W).

    Each kernel offset *adds* its slice back where im2col read it (windows
    overlap, so one input pixel collects from several offsets).  With
    ``out`` (an (N, C, H, W) array, or a view), the result is written there."""
    xp = get_array_module(col)
    n, c, kh, kw, oh, ow = col.shape
    _, _, h, w = x_shape
    sh, sw = pair(stride, "stride")
    dil_h, dil_w = pair(dilation, "dilation")
    top, bottom, left, right = conv_padding(padding)
    if kernels.use_for(col):  # a per-pixel gather: one CUDA kernel, same sums
        from ...kernels import conv as cuda_conv
        result = cuda_conv.col2im(col, x_shape, (sh, sw), (top, bottom, left, right), (dil_h, dil_w))
        if out is None:
            return result
        out[...] = result
        return out

    grad = xp.zeros((n, c, h + top + bottom, w + left + right), dtype=col.dtype)
    for ky in range(kh):
        y0 = ky * dil_h
        for kx in range(kw):
            x0 = kx * dil_w
            grad[:, :, y0:y0 + sh * oh:sh, x0:x0 + sw * ow:sw] += col[:, :, ky, kx]
    grad = grad[:, :, top:top + h, left:left + w]  # drop the padding
    if out is None:
        return xp.ascontiguousarray(grad)
    out[...] = grad
    return out


# ---------------------------------------------------------------- products

def batch_chunks(xp, n, bytes_per_image):
    """The batch's chunks on the CPU (``parallel.batch_chunks``); one piece on
    a GPU, where chunks would only add launches."""
    if xp.__name__ != "numpy":
        return [slice(0, n)]
    return parallel.batch_chunks(n, bytes_per_image)


BLOCK_COLUMNS = 64


def product(xp, w, cols, out):
    """out = w @ cols for every image: w (..., R, K), cols and out (m, ..., K or
    R, P).  On the CPU, with few output rows (R <= 32), through a view of cols
    in 64-column blocks: the same dot products, which OpenBLAS runs faster
    that way for thin matrices."""
    rows, p = w.shape[-2], cols.shape[-1]
    if xp.__name__ != "numpy" or rows > 32 or p <= BLOCK_COLUMNS or p % BLOCK_COLUMNS:
        return xp.matmul(w, cols, out=out)

    def blocked(a):  # (..., X, P) -> (..., P/64, X, 64), a view
        v = a.reshape(a.shape[:-1] + (p // BLOCK_COLUMNS, BLOCK_COLUMNS))
        return xp.moveaxis(v, -2, -3)
    xp.matmul(w[..., None, :, :], blocked(cols), out=blocked(out))
    return out


def weight_grad_t(xp, cols, dy_mat):
    """sum over images of cols[n] @ dy[n]^T: (m, G, K, P), (m, G, R, P) -> (G, K, R).

    Image by image; with more output channels than pixels (ImageNet ResNets'
    last stages) as one product over the chunk, images and pixels joined into
    one long sum.  Shape-determined either way."""
    m, g, _, p = cols.shape
    if g == 1 and dy_mat.shape[2] > p:
        return xp.tensordot(cols[:, 0], dy_mat[:, 0], axes=([0, 2], [0, 2]))[None]
    return xp.matmul(cols, dy_mat.transpose(0, 1, 3, 2)).sum(axis=0)


def weight_from_t(dw_t, weight_shape):
    """dW (O, C/G, kh, kw) from its transposed group blocks (G, C/G*kh*kw, O/G)."""
    xp = get_array_module(dw_t)
    return xp.ascontiguousarray(dw_t.transpose(0, 2, 1)).reshape(weight_shape)


# ---------------------------------------------------------------- the path

def im2col_forward(x, weight, bias, stride, pads, dilation, groups, y):
    """y (N, O, oh, ow) = conv2d(x, weight) + bias, written into ``y``, chunk by
    chunk: im2col into a borrowed buffer, one product, the buffer handed back."""
    xp = get_array_module(x)
    n, c, _, _ = x.shape
    o, c_per_group, kh, kw = weight.shape
    oh, ow = y.shape[2:]
    g = groups
    w_groups = weight.reshape(g, o // g, c_per_group * kh * kw)

    def one_chunk(s):
        m = x[s].shape[0]
        col = im2col(x[s], (kh, kw), stride, pads, dilation,
                     out=workspace.borrow(xp, (m, c, kh, kw, oh, ow), x.dtype))
        product(xp, w_groups, col.reshape(m, g, c_per_group * kh * kw, oh * ow),
                y[s].reshape(m, g, o // g, oh * ow))
        workspace.give_back(col)  # backward rebuilds it from x
        if bias is not None:
            y[s] += bias.reshape(1, o, 1, 1)

    parallel.map_chunks(one_chunk, batch_chunks(xp, n, c * kh * kw * oh * ow * x.dtype.itemsize),
                        like=x)
    return y


def im2col_backward(dy, cache):
    """(dx, dW, db) of ``im2col_forward``:  dW = dy @ col^T  and  dx = col2im(W^T @ dy),
    or, for stride 1 and one group, dx as a convolution of dy by the flipped
    kernel (copies instead of col2im's strided adds)."""
    xp = get_array_module(dy)
    x, weight, stride, pads, dilation, g = (cache.x, cache.weight, cache.stride, cache.padding,
                                            cache.dilation, cache.groups)
    o, c_per_group, kh, kw = weight.shape
    n, c, h, w = x.shape
    oh, ow = dy.shape[2:]
    w_t = weight.reshape(g, o // g, c_per_group * kh * kw).transpose(0, 2, 1)
    dx = xp.empty(x.shape, dtype=dy.dtype)
    full_pads = dx_as_conv_padding(stride, g, (kh, kw), dilation, pads)
    if full_pads is not None:  # the flipped kernel, in/out swapped: (C, O*kh*kw), once
        w_flip = xp.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        w_flip = w_flip.reshape(c, o * kh * kw)

    def one_chunk(s):
        m = x[s].shape[0]
        col = im2col(x[s], (kh, kw), stride, pads, dilation,
                     out=workspace.borrow(xp, (m, c, kh, kw, oh, ow), x.dtype))
        col_mat = col.reshape(m, g, c_per_group * kh * kw, oh * ow)
        dy_mat = dy[s].reshape(m, g, o // g, oh * ow)
        dw_t = weight_grad_t(xp, col_mat, dy_mat)  # (G, K/G, O/G)
        db = dy_mat.sum(axis=(0, 3)).reshape(o) if cache.has_bias else None
        if full_pads is None:
            dcol = xp.matmul(w_t, dy_mat, out=col_mat)  # W^T @ dy[n], into col's buffer
            col2im(dcol.reshape(m, c, kh, kw, oh, ow), x[s].shape, stride, pads, dilation,
                   out=dx[s])
            del dcol, col_mat
            workspace.give_back(col)
            return dw_t, db
        del col_mat
        workspace.give_back(col)
        dy_col = im2col(dy[s], (kh, kw), 1, full_pads, dilation,
                        out=workspace.borrow(xp, (m, o, kh, kw, h, w), dy.dtype))
        product(xp, w_flip, dy_col.reshape(m, o * kh * kw, h * w), dx[s].reshape(m, c, h * w))
        workspace.give_back(dy_col)
        return dw_t, db

    parts = parallel.map_chunks(one_chunk, batch_chunks(xp, n, c * kh * kw * oh * ow * dy.dtype.itemsize),
                                like=dy)
    dw = weight_from_t(parallel.sum_in_order([p[0] for p in parts]), weight.shape)
    db = parallel.sum_in_order([p[1] for p in parts]) if cache.has_bias else None
    return dx, dw, db
