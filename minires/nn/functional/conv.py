"""2-D convolution as im2col + one matrix product, forward and backward.

The idea (Chainer's ``utils/conv.py``): copy every kh x kw window of the
input into a column buffer ``col``, so the whole convolution becomes a
matrix product ``W @ col``.  The backward is the same product transposed, and
``col2im`` scatters the column gradient back onto the input.

Layout of the column buffer (chosen for speed, measured on CPU):

    col[n, c, ky, kx, oy, ox] = x_padded[n, c, oy*sy + ky*dy, ox*sx + kx*dx]

Image by image, ``col[n]`` reshapes *without a copy* to a (C*kh*kw, oh*ow)
matrix, so ``y[n] = W @ col[n]`` is one batched ``matmul`` that writes
straight into the NCHW output: no transposed copy of y, dy or dx anywhere
(measured: a 16-channel chunk's forward ran 2.1x faster than with one
(C*kh*kw, N*oh*ow) product followed by the transpose back to NCHW).
``dW`` is the sum over images of ``dy[n] @ col[n]^T``.  Groups split C and
O into G blocks: one more leading axis in the same batched products.

Memory: the cache keeps x, not col (9x larger for a 3x3 kernel); backward
rebuilds col with one more im2col.  Holding every layer's col from forward to
backward was most of a training step's memory (884 MiB peak for ResNet-20 at
batch 128 against torch's 350).  The column buffers are borrowed from
``workspace`` and handed back right after use, so the same few buffers serve
every layer and every step: fresh buffers this size cost page faults that
made the im2col copy ~3x slower inside a training step (measured).

On the CPU, stride-1 one-group convolutions (most of a ResNet's) skip
im2col altogether: ``conv_shifted.py`` computes them from shifted copies
or views of the flat image, one product per kernel row (or offset), with
no im2col copies (measured 1.4-2x faster forward and backward than im2col,
and the 'same'-width layout up to 1.3x faster again).  Everything else, and
the GPU, uses the im2col path below.

Padding is given as (top, bottom, left, right) so that torch's asymmetric
``padding="same"`` (extra row/column at the bottom/right) fits the same code.
Everything here takes ``xp`` from its inputs, so it runs unchanged on CuPy.
"""
from ..checks import pair
from ...backend import get_array_module
from ... import kernels, parallel
from . import conv_shifted, workspace


# ---------------------------------------------------------------- arguments

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


# ---------------------------------------------------------------- conv2d
#
# Both passes run the batch in chunks of a few images (``parallel.batch_chunks``),
# each chunk start to finish on one thread: im2col into a chunk-sized column
# buffer, one product, the copy out.  The chunks run on all cores, and even on
# one core they are faster than one batch-sized piece, because a chunk's column
# buffer stays in the caches.  The weight gradient (a sum over the batch) is
# added over the chunks in chunk order, and the chunks depend only on the
# shapes: any thread count gives the same bits.  ``conv_reference.conv2d_reference`` is
# the same convolution as a plain loop, for reading and for the tests.

def _full_padding(cache, kernel_size):
    """Padding that makes dx a plain convolution of dy, or None (see below)."""
    return _dx_as_conv_padding(cache["stride"], cache["groups"], kernel_size,
                               cache["dilation"], cache["padding"])


def _dx_as_conv_padding(stride, groups, kernel_size, dilation, padding):
    """Padding that makes dx a plain convolution of dy, or None.

    For stride 1 and one group, dx[n, c, p, q] = sum over o, ky, kx of
    W[o, c, ky, kx] * dy[n, o, p + top - d*ky, q + left - d*kx]: a convolution
    of dy, padded by d*(k-1) minus the forward padding on each side, with the
    kernel flipped and its in/out channels swapped.  Measured, its im2col
    (copies) is 2-3x faster than col2im's strided adds.  Strides, groups and
    padding wider than the kernel keep col2im."""
    if stride != (1, 1) or groups != 1:
        return None
    (kh, kw), (dil_h, dil_w) = kernel_size, dilation
    top, bottom, left, right = padding
    pads = (dil_h * (kh - 1) - top, dil_h * (kh - 1) - bottom, dil_w * (kw - 1) - left, dil_w * (kw - 1) - right)
    return pads if min(pads) >= 0 else None


def _batch_chunks(xp, n, bytes_per_image):
    if xp.__name__ != "numpy":  # one GPU: one piece, no extra launches
        return [slice(0, n)]
    return parallel.batch_chunks(n, bytes_per_image)


BLOCK_COLUMNS = 64


def _product(xp, w, cols, out):
    """out = w @ cols for every image: w (..., R, K), cols and out (m, ..., K or
    R, P).  With few output rows (R <= 32 channels), OpenBLAS runs the product
    faster on 64-column blocks of cols than on all P columns at once
    (measured on one core: 1.2-1.9x for 16 and 32 channels, slower from 64
    on), so on the CPU those go through a blocked view: no copy, the same
    dot products."""
    rows, p = w.shape[-2], cols.shape[-1]
    if xp.__name__ != "numpy" or rows > 32 or p <= BLOCK_COLUMNS or p % BLOCK_COLUMNS:
        return xp.matmul(w, cols, out=out)

    def blocked(a):  # (..., X, P) -> (..., P/64, X, 64), a view
        v = a.reshape(a.shape[:-1] + (p // BLOCK_COLUMNS, BLOCK_COLUMNS))
        return xp.moveaxis(v, -2, -3)
    xp.matmul(w[..., None, :, :], blocked(cols), out=blocked(out))
    return out


def _weight_grad_t(xp, cols, dy_mat):
    """sum over images of cols[n] @ dy[n]^T: (m, G, K, P), (m, G, R, P) -> (G, K, R).

    Image by image by default.  When a layer has more output channels than
    pixels (ImageNet ResNets' last stages: 512 channels, 7x7), each image's
    (K, R) product is larger than its columns, and one product over the whole
    chunk (numpy's tensordot: images and pixels joined into one long sum) ran
    2.6x faster (measured, 512 channels at 7x7).  Shape-determined either way."""
    m, g, _, p = cols.shape
    if g == 1 and dy_mat.shape[2] > p:
        return xp.tensordot(cols[:, 0], dy_mat[:, 0], axes=([0, 2], [0, 2]))[None]
    return xp.matmul(cols, dy_mat.transpose(0, 1, 3, 2)).sum(axis=0)


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """y = conv2d(x, weight) + bias, as torch.nn.functional.conv2d.

    x (N, C, H, W), weight (O, C/groups, kh, kw), bias (O,) or None; stride and
    dilation an int or a pair; padding an int, a pair, (top, bottom, left,
    right), "valid" or "same".  Returns ``(y, cache)`` with y (N, O, oh, ow).
    The same convolution written to be read: ``conv_reference.conv2d_reference``."""
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
    g, o_per_group = groups, o // groups
    w_groups = weight.reshape(g, o_per_group, c_per_group * kh * kw)
    y = xp.empty((n, o, oh, ow), dtype=x.dtype)
    itemsize = x.dtype.itemsize

    if (kh, kw) == (1, 1) and stride == (1, 1) and pads == (0, 0, 0, 0):
        # A 1x1 convolution is a matrix product at every pixel: y[n] = W @ x[n].
        # No im2col, no copy of x: one batched product straight in NCHW.
        def pointwise(s):
            x_mat = x[s].reshape(-1, g, c_per_group, h * w)
            xp.matmul(w_groups, x_mat, out=y[s].reshape(-1, g, o_per_group, h * w))
            if bias is not None:
                y[s] += bias.reshape(1, o, 1, 1)
        parallel.map_chunks(pointwise, _batch_chunks(xp, n, (c + o) * h * w * itemsize), like=x)
        return y, {"x_mat": x.reshape(n, g, c_per_group, h * w), "weight": weight,
                   "has_bias": bias is not None}

    if xp.__name__ == "numpy" and _dx_as_conv_padding(stride, groups, (kh, kw), dilation, pads):
        # stride 1, one group, on the CPU: no im2col at all (conv_shifted.py)
        conv_shifted.wide_conv(xp, x, weight, pads, dilation, y)
        if bias is not None:
            y += bias.reshape(1, o, 1, 1)
        return y, {"x": x, "weight": weight, "has_bias": bias is not None, "shifted": True,
                   "groups": groups, "x_shape": tuple(x.shape), "stride": stride,
                   "padding": pads, "dilation": dilation}

    def one_chunk(s):
        xs = x[s]
        m = xs.shape[0]
        col = im2col(xs, (kh, kw), stride, pads, dilation,
                     out=workspace.borrow(xp, (m, c, kh, kw, oh, ow), x.dtype))
        # y[n] = W @ col[n] for every image (and group), written straight into y
        _product(xp, w_groups, col.reshape(m, g, c_per_group * kh * kw, oh * ow),
                 y[s].reshape(m, g, o_per_group, oh * ow))
        workspace.give_back(col)  # backward rebuilds it from x (see the module doc)
        if bias is not None:
            y[s] += bias.reshape(1, o, 1, 1)

    parallel.map_chunks(one_chunk, _batch_chunks(xp, n, c * kh * kw * oh * ow * itemsize), like=x)
    cache = {"x": x, "weight": weight, "has_bias": bias is not None,
             "groups": groups, "x_shape": tuple(x.shape), "stride": stride, "padding": pads, "dilation": dilation}
    return y, cache


def conv2d_backward(dy, cache):
    """Returns (dx, dW, db) for dy = dL/dy (N, O, oh, ow); db is None without a bias.

    With y = W @ col:  dW = dy @ col^T,  dcol = W^T @ dy,  dx = col2im(dcol),
    and db sums dy over everything except the channel axis.  A forward that
    took the stride-1 path (conv_shifted.py) is undone there too: dW from the
    same shifted slices, dx as a convolution of dy by the flipped kernel.

    col is rebuilt from the cached x into a borrowed buffer; once dW is
    computed col is not needed any more, so dcol is written into the same
    buffer (no second buffer as large as col).  The cache is consumed (it
    drops x): run conv2d_forward again to backpropagate a second time.  The
    cache keeps a reference to x, not a copy: do not change x in place
    between forward and backward."""
    xp = get_array_module(dy)
    weight, has_bias = cache["weight"], cache["has_bias"]
    o, c_per_group, kh, kw = weight.shape
    n, _, oh, ow = dy.shape
    itemsize = dy.dtype.itemsize

    if "x_mat" in cache:  # the 1x1 stride-1 shortcut of conv2d_forward
        x_mat = cache.pop("x_mat")
        g = x_mat.shape[1]
        w_t = weight.reshape(g, o // g, c_per_group).transpose(0, 2, 1)
        dx = xp.empty((n, g * c_per_group, oh, ow), dtype=dy.dtype)

        def pointwise(s):
            dy_mat = dy[s].reshape(-1, g, o // g, oh * ow)
            # dW = sum over images of dy[n] @ x[n]^T (computed transposed, see below);
            # dx[n] = W^T @ dy[n]
            dw_t = _weight_grad_t(xp, x_mat[s], dy_mat)  # (G, C/G, O/G)
            xp.matmul(w_t, dy_mat, out=dx[s].reshape(-1, g, c_per_group, oh * ow))
            return dw_t, (dy[s].sum(axis=(0, 2, 3)) if has_bias else None)

        parts = parallel.map_chunks(pointwise, _batch_chunks(
            xp, n, (g * c_per_group + o) * oh * ow * itemsize), like=dy)
        dw_t = parallel.sum_in_order([p[0] for p in parts])
        dw = xp.ascontiguousarray(dw_t.transpose(0, 2, 1)).reshape(weight.shape)
        db = parallel.sum_in_order([p[1] for p in parts]) if has_bias else None
        return dx, dw, db

    x = cache.pop("x", None)
    if x is None:
        raise RuntimeError("conv2d_backward: this cache was already used by a backward "
                           "(it releases its input); run conv2d_forward again")
    if cache.get("shifted"):  # the im2col-free stride-1 path (conv_shifted.py)
        pads, dilation = cache["padding"], cache["dilation"]
        # dx: a convolution of dy by the flipped kernel, in/out channels swapped
        dx = xp.empty(cache["x_shape"], dtype=dy.dtype)
        dw = conv_shifted.wide_backward(xp, x, dy, weight, pads, _full_padding(cache, (kh, kw)),
                                        dilation, dx)
        db = dy.sum(axis=(0, 2, 3)) if has_bias else None
        return dx, dw, db
    g = cache["groups"]
    c, h, w = x.shape[1:]
    w_t = weight.reshape(g, o // g, c_per_group * kh * kw).transpose(0, 2, 1)
    dx = xp.empty(cache["x_shape"], dtype=dy.dtype)
    full_pads = _full_padding(cache, (kh, kw))
    if full_pads is not None:
        # dx as a convolution of dy (see _full_padding): the flipped kernel with
        # in/out channels swapped, (C, O*kh*kw), made once for all chunks
        w_flip = xp.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        w_flip = w_flip.reshape(c, o * kh * kw)

    def one_chunk(s):
        xs = x[s]
        m = xs.shape[0]
        col = im2col(xs, (kh, kw), cache["stride"], cache["padding"], cache["dilation"],
                     out=workspace.borrow(xp, (m, c, kh, kw, oh, ow), x.dtype))
        col_mat = col.reshape(m, g, c_per_group * kh * kw, oh * ow)
        dy_mat = dy[s].reshape(m, g, o // g, oh * ow)
        # dW = sum over images of dy[n] @ col[n]^T, computed as (col[n] @ dy[n]^T)^T:
        # the same numbers; for this long reduction OpenBLAS runs this
        # orientation faster (measured 1.1-1.5x on one thread).
        dw_t = _weight_grad_t(xp, col_mat, dy_mat)  # (G, K/G, O/G)
        db = dy_mat.sum(axis=(0, 3)).reshape(o) if has_bias else None
        if full_pads is None:
            dcol = xp.matmul(w_t, dy_mat, out=col_mat)  # W^T @ dy[n], into col's buffer
            col2im(dcol.reshape(m, c, kh, kw, oh, ow), xs.shape, cache["stride"],
                   cache["padding"], cache["dilation"], out=dx[s])
            del dcol, col_mat
            workspace.give_back(col)
            return dw_t, db
        del col_mat
        workspace.give_back(col)
        # im2col of dy copies where col2im would add: same products, fewer passes
        dy_col = im2col(dy[s], (kh, kw), 1, full_pads, cache["dilation"],
                        out=workspace.borrow(xp, (m, o, kh, kw, h, w), dy.dtype))
        _product(xp, w_flip, dy_col.reshape(m, o * kh * kw, h * w), dx[s].reshape(m, c, h * w))
        workspace.give_back(dy_col)
        return dw_t, db

    parts = parallel.map_chunks(one_chunk, _batch_chunks(xp, n, c * kh * kw * oh * ow * itemsize),
                                like=dy)
    dw_t = parallel.sum_in_order([p[0] for p in parts])
    dw = xp.ascontiguousarray(dw_t.transpose(0, 2, 1)).reshape(weight.shape)
    db = parallel.sum_in_order([p[1] for p in parts]) if has_bias else None
    return dx, dw, db

