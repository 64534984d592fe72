"""The shifted-slices convolution path: stride 1 without im2col.

A stride-1 convolution reads, for kernel offset (ky, kx), the input shifted
by (ky*dil_h - top, kx*dil_w - left).  Lay each channel's image out flat
and a shift in y is a shift of ``ky*dil_h`` whole rows: a plain slice.

* 'Same'-width convolutions (left + right = dil_w*(kw-1), so OW = W: every
  stride-1 3x3 pad-1 conv of a ResNet).  For each column offset kx, one
  copy of the image shifted by kx*dil_w - left, its wrapped-round columns
  zeroed (``_column_shifted_copies``).  Stacked, these are
  ``rows[(kx, c), r*W + col]``, and each kernel ROW is one product

      y += W[:, :, ky, :] @ rows[:, ky*dil_h*W : ky*dil_h*W + OH*W]      (O, kw*C) @ (kw*C, OH*W)

  written straight into y.
* Any other padding: the image padded and laid out flat with rows Wp wide
  (``_flat_padded``); one product per offset (ky, kx) on a "wide" grid whose
  last Wp - OW columns of each row are junk and get dropped.

dW is the same slices the other way round; dx of a stride-1 convolution is
a stride-1 convolution of dy by the flipped kernel (see
``conv_geometry.dx_as_conv_padding``), so it comes from the same products.
CPU only, stride 1, one group.  Why: docs/performance.md.
"""
from ...backend import get_array_module
from ... import parallel
from . import workspace
from .conv_geometry import dx_as_conv_padding

STACKED_WEIGHT_GRAD_TERMS = 64  # dW by kernel rows below kw*C terms (see _weight_grad_rows)
FEW_PIXELS = 256  # ... and only with few pixels and output channels


def _geometry(shape, kernel, pads, dilation):
    (h, w), (kh, kw), (dil_h, dil_w) = shape[-2:], kernel, dilation
    top, bottom, left, right = pads
    hp, wp = h + top + bottom, w + left + right
    oh, ow = hp - dil_h * (kh - 1), wp - dil_w * (kw - 1)
    return hp, wp, oh, ow, hp * wp + dil_w * (kw - 1)


def _same_width(shape, kernel, pads, dilation):
    return pads[2] + pads[3] == dilation[1] * (kernel[1] - 1) and shape[-1] > 0


# ---------------------------------------------------------------- 'same'-width layout

def _column_shifted_copies(xp, x, kw, dil_w, pads):
    """rows (m, kw, C, Hp*W), a borrowed buffer: rows[:, kx, c, r*W + col] =
    x[:, c, r - top, col + kx*dil_w - left], zero outside the image."""
    m, c, h, w = x.shape
    top, bottom, left, _ = pads
    hp = h + top + bottom
    rows = workspace.borrow(xp, (m, kw, c, hp * w), x.dtype)
    x_flat = x.reshape(m, c, h * w)
    for kx in range(kw):
        d = kx * dil_w - left          # row kx reads x_flat[j - top*W + d]
        r = rows[:, kx]
        at = top * w - d               # where x_flat[0] lands
        src, dst = max(0, -at), max(0, at)
        count = max(0, min(h * w - src, hp * w - dst))
        r[:, :, :dst] = 0
        r[:, :, dst:dst + count] = x_flat[:, :, src:src + count]  # one run per channel
        r[:, :, dst + count:] = 0
        grid = r.reshape(m, c, hp, w)
        if d < 0:    # these columns would read left of the image (the last row's end)
            grid[:, :, :, :min(w, -d)] = 0
        elif d > 0:  # ... or right of it (the next row's start)
            grid[:, :, :, max(0, w - d):] = 0
    return rows


def _products_by_kernel_row(xp, rows, w_rows, dil_h, w, out_mat):
    """out_mat (m, O, OH*W) = sum over kernel rows ky of
    w_rows[ky] (O, kw*C) @ rows[:, :, ky*dil_h*W : ... + OH*W]."""
    m, kw, c, length = rows.shape
    stacked = rows.reshape(m, kw * c, length)
    n_out = out_mat.shape[2]
    part = workspace.borrow(xp, out_mat.shape, out_mat.dtype)
    for ky in range(w_rows.shape[0]):
        window = stacked[:, :, ky * dil_h * w:ky * dil_h * w + n_out]
        if ky == 0:
            xp.matmul(w_rows[0], window, out=out_mat)
        else:
            xp.matmul(w_rows[ky], window, out=part)
            out_mat += part
    workspace.give_back(part)


def _weight_grad_rows(xp, rows, dy_mat, kh, dil_h, w):
    """dW (O, C, kh, kw) of one chunk: sum over its images of dy @ slice^T.

    Three groupings of the same products, by shape (measured at batch 128 on
    one core, docs/performance.md): by kernel rows and transposed,
    slice @ dy^T (kw*C, O), for most shapes (1.1-1.6x faster); with few
    output channels on small images (O <= 32, at most 256 pixels: a
    ResNet-20's first two stages) the untransposed products, by kernel rows
    when kw*C is small, else one per offset (1.1-1.5x faster there)."""
    m, kw, c, _ = rows.shape
    o, n_out = dy_mat.shape[1], dy_mat.shape[2]
    stacked = rows.reshape(m, kw * c, -1)
    if o > 32 or n_out > FEW_PIXELS:
        grad = xp.empty((kh, kw * c, o), dtype=dy_mat.dtype)
        dy_t = dy_mat.transpose(0, 2, 1)
        for ky in range(kh):
            window = stacked[:, :, ky * dil_h * w:ky * dil_h * w + n_out]
            grad[ky] = xp.matmul(window, dy_t).sum(axis=0)
        return grad.reshape(kh, kw, c, o).transpose(3, 2, 0, 1)
    if kw * c < STACKED_WEIGHT_GRAD_TERMS:
        grad = xp.empty((kh, o, kw * c), dtype=dy_mat.dtype)
        for ky in range(kh):
            window = stacked[:, :, ky * dil_h * w:ky * dil_h * w + n_out]
            grad[ky] = xp.matmul(dy_mat, window.transpose(0, 2, 1)).sum(axis=0)
        return grad.reshape(kh, o, kw, c).transpose(1, 3, 0, 2)
    grad = xp.empty((kh, kw, o, c), dtype=dy_mat.dtype)
    for ky in range(kh):
        for kx in range(kw):
            window = rows[:, kx, :, ky * dil_h * w:ky * dil_h * w + n_out]
            grad[ky, kx] = xp.matmul(dy_mat, window.transpose(0, 2, 1)).sum(axis=0)
    return grad.transpose(2, 3, 0, 1)


def _kernel_rows(xp, weight):
    """weight (O, C, kh, kw) -> (kh, O, kw*C), columns ordered (kx, c) like rows."""
    o, c, kh, kw = weight.shape
    return xp.ascontiguousarray(weight.transpose(2, 0, 3, 1)).reshape(kh, o, kw * c)


# ---------------------------------------------------------------- padded layout

def _flat_padded(xp, x, pads, length):
    """x (m, C, H, W) padded by pads = (top, bottom, left, right) and laid out
    flat, (m, C, length), zeros after the last row (the slices of the last
    kernel offsets reach up to ``length``).  A borrowed buffer."""
    m, c, h, w = x.shape
    top, bottom, left, right = pads
    wp = w + left + right
    flat = workspace.borrow(xp, (m, c, length), x.dtype)
    flat[:, :, :top * wp] = 0
    flat[:, :, (top + h) * wp:] = 0
    grid = flat[:, :, top * wp:(top + h) * wp].reshape(m, c, h, wp)
    grid[:, :, :, :left] = 0
    grid[:, :, :, left + w:] = 0
    grid[:, :, :, left:left + w] = x
    return flat


def _products_by_offset(xp, flat, weight, geometry, dilation, out):
    """out (m, O, OH, OW) from one chunk's flat padded images: a product per offset."""
    o, _, kh, kw = weight.shape
    _, wp, oh, ow, _ = geometry
    m, wide = flat.shape[0], oh * wp
    acc = workspace.borrow(xp, (m, o, wide), flat.dtype)
    part = workspace.borrow(xp, (m, o, wide), flat.dtype)
    for ky in range(kh):
        for kx in range(kw):
            shift = ky * dilation[0] * wp + kx * dilation[1]
            window = flat[:, :, shift:shift + wide]
            if ky == 0 and kx == 0:
                xp.matmul(weight[:, :, 0, 0], window, out=acc)
            else:
                xp.matmul(weight[:, :, ky, kx], window, out=part)
                acc += part
    out[...] = acc.reshape(m, o, oh, wp)[:, :, :, :ow]  # drop the junk columns
    workspace.give_back(acc)
    workspace.give_back(part)


def _weight_grad_padded(xp, flat, dy, geometry, kernel, dilation):
    """dW (O, C, kh, kw) of one chunk, dy (m, O, OH, OW) put on the wide grid."""
    (kh, kw), (dil_h, dil_w) = kernel, dilation
    _, wp, oh, ow, _ = geometry
    m, o, c = dy.shape[0], dy.shape[1], flat.shape[1]
    dy_wide = workspace.borrow(xp, (m, o, oh, wp), dy.dtype)
    dy_wide[:, :, :, :ow] = dy
    dy_wide[:, :, :, ow:] = 0  # junk columns add nothing
    dy_mat = dy_wide.reshape(m, o, oh * wp)
    grad = xp.empty((o, c, kh, kw), dtype=dy.dtype)
    for ky in range(kh):
        for kx in range(kw):
            window = flat[:, :, ky * dil_h * wp + kx * dil_w:][:, :, :oh * wp]
            grad[:, :, ky, kx] = xp.matmul(dy_mat, window.transpose(0, 2, 1)).sum(axis=0)
    workspace.give_back(dy_wide)
    return grad


# ---------------------------------------------------------------- the two passes

def shifted_slices_forward(x, weight, pads, dilation, out):
    """out (N, O, OH, OW) = the stride-1, one-group convolution of x (N, C, H, W)
    by weight (O, C, kh, kw) with padding (top, bottom, left, right)."""
    xp = get_array_module(x)
    n, c = x.shape[:2]
    o, _, kh, kw = weight.shape
    hp, wp, oh, ow, length = _geometry(x.shape, (kh, kw), pads, dilation)
    itemsize = x.dtype.itemsize
    if _same_width(x.shape, (kh, kw), pads, dilation):
        w_rows = _kernel_rows(xp, weight)

        def one(s):
            rows = _column_shifted_copies(xp, x[s], kw, dilation[1], pads)
            _products_by_kernel_row(xp, rows, w_rows, dilation[0], ow, out[s].reshape(-1, o, oh * ow))
            workspace.give_back(rows)
        per_image = (kw * c * hp * ow + 2 * o * oh * ow) * itemsize
    else:
        def one(s):
            flat = _flat_padded(xp, x[s], pads, length)
            _products_by_offset(xp, flat, weight, (hp, wp, oh, ow, length), dilation, out[s])
            workspace.give_back(flat)
        per_image = (c * length + 2 * o * oh * wp) * itemsize
    parallel.map_chunks(one, parallel.batch_chunks(n, per_image), like=x)
    return out


def shifted_slices_backward(dy, cache):
    """(dx, dW, db) of ``shifted_slices_forward``'s convolution (a ``ConvCache``),
    dW and dx in one pass over the batch.  dx is the convolution of dy,
    padded by ``dx_as_conv_padding``, with the flipped kernel (channels swapped)."""
    xp = get_array_module(dy)
    x, weight, pads, dilation = cache.x, cache.weight, cache.padding, cache.dilation
    n, c = x.shape[:2]
    o, _, kh, kw = weight.shape
    full_pads = dx_as_conv_padding((1, 1), 1, (kh, kw), dilation, pads)
    geometry = _geometry(x.shape, (kh, kw), pads, dilation)
    hp, wp, oh, ow, length = geometry
    w_flip = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, O, kh, kw)
    dx = xp.empty(x.shape, dtype=dy.dtype)
    itemsize = x.dtype.itemsize
    same_width = _same_width(x.shape, (kh, kw), pads, dilation)
    if same_width:  # then dx's convolution is 'same'-width too
        h = x.shape[2]
        w_rows = _kernel_rows(xp, w_flip)
        hp_dy = oh + full_pads[0] + full_pads[1]

        def one(s):
            rows = _column_shifted_copies(xp, x[s], kw, dilation[1], pads)
            grad = _weight_grad_rows(xp, rows, dy[s].reshape(-1, o, oh * ow), kh, dilation[0], ow)
            workspace.give_back(rows)
            rows = _column_shifted_copies(xp, dy[s], kw, dilation[1], full_pads)
            _products_by_kernel_row(xp, rows, w_rows, dilation[0], ow, dx[s].reshape(-1, c, h * ow))
            workspace.give_back(rows)
            return grad
        per_image = (kw * c * hp * ow + kw * o * hp_dy * ow + 2 * c * h * ow) * itemsize
    else:
        def one(s):
            flat = _flat_padded(xp, x[s], pads, length)
            grad = _weight_grad_padded(xp, flat, dy[s], geometry, (kh, kw), dilation)
            workspace.give_back(flat)
            return grad
        per_image = (c * length + o * oh * wp) * itemsize
    parts = parallel.map_chunks(one, parallel.batch_chunks(n, per_image), like=x)
    if not same_width:  # dx apart: its own geometry decides its layout
        shifted_slices_forward(dy, w_flip, full_pads, dilation, dx)
    dw = xp.ascontiguousarray(parallel.sum_in_order(parts))
    db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None
    return dx, dw, db
