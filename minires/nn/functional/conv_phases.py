"""The phase path: a stride-2 3x3 convolution (padding 1) without im2col.

A stride-2 convolution reads the input at even and odd rows and columns
separately.  Split x into its four *phases*, x_pq[i, j] = x[2i+p, 2j+q]
(each H/2 x W/2), and every output pixel y[oy, ox] reads

    kernel row ky = 0 -> phase row p=1, i = oy-1      kernel column kx = 0 -> q=1, j = ox-1
    kernel row ky = 1 -> phase row p=0, i = oy        kernel column kx = 1 -> q=0, j = ox
    kernel row ky = 2 -> phase row p=1, i = oy        kernel column kx = 2 -> q=1, j = ox

So the stride-2 convolution is a stride-1 convolution on the phases with
offsets 0 or -1: the column-shifted layout of ``conv_shifted.py`` again.
Six blocks of C channels, laid out flat with one zero row on top
(``_phase_blocks``), in this order

    block   0       1       2     3     4     5
    phase   p0q1    p1q1    p1q0  p1q1  p0q0  p0q1
    column  j=ox-1  j=ox-1  j=ox  j=ox  j=ox  j=ox

make each output row two products, with no zero taps (9 per pixel, as the
convolution itself): the row above (i = oy-1, only p=1: blocks 1-3, kernel
row 0) and the row itself (i = oy: all six blocks, kernel rows 1 and 2).
Backward: dW is the same two products the other way round; dx is the two
products transposed, written into the blocks' layout and added back onto
the phases they read (``_blocks_to_image``).  CPU only, even
H and W, one group, no dilation.  Why: docs/performance.md.
"""
from ...backend import get_array_module
from ... import parallel
from . import workspace

# kernel taps (ky, kx) of each block, for the row above (blocks 1-3) and the row itself (0-5)
ROW_ABOVE_TAPS = ((0, 0), (0, 1), (0, 2))
ROW_TAPS = ((1, 0), (2, 0), (2, 1), (2, 2), (1, 1), (1, 2))
# the phase (p, q) each unshifted block holds: x[:, :, p::2, q::2]
UNSHIFTED_PHASES = ((2, (1, 0)), (3, (1, 1)), (4, (0, 0)), (5, (0, 1)))


def applies(x_shape, weight_shape, stride, pads, dilation, groups):
    """Whether this path computes this convolution (a ResNet's downsampling 3x3)."""
    h, w = x_shape[-2:]
    return (weight_shape[2:] == (3, 3) and stride == (2, 2) and pads == (1, 1, 1, 1)
            and dilation == (1, 1) and groups == 1 and h % 2 == 0 and w % 2 == 0 and h > 0 and w > 0)


def _phase_blocks(xp, x):
    """blocks (m, 6, C, (H/2+1)*(W/2)), a borrowed buffer: the six blocks of
    the module doc, each image's phase laid out flat below one zero row."""
    m, c, h, w = x.shape
    h2, w2 = h // 2, w // 2
    blocks = workspace.borrow(xp, (m, 6, c, (h2 + 1) * w2), x.dtype)
    grid = blocks.reshape(m, 6, c, h2 + 1, w2)
    grid[:, :, :, 0] = 0  # the row above the first (the padding)
    for block, (p, q) in UNSHIFTED_PHASES:
        grid[:, block, :, 1:] = x[:, :, p::2, q::2]
    # blocks 0 and 1 are blocks 5 and 3 one column to the right (j = ox-1):
    # a flat shift by one, then each row's first column zeroed
    flat = blocks.reshape(m, 6, c, -1)
    flat[:, 0:2, :, w2 + 1:] = flat[:, 5:2:-2, :, w2:-1]
    grid[:, 0:2, :, 1:, 0] = 0
    return blocks


def _weight_blocks(xp, weight):
    """weight (O, C, 3, 3) -> (O, 3C) for the row above and (O, 6C) for the row itself."""
    above = xp.concatenate([weight[:, :, ky, kx] for ky, kx in ROW_ABOVE_TAPS], axis=1)
    row = xp.concatenate([weight[:, :, ky, kx] for ky, kx in ROW_TAPS], axis=1)
    return above, row


def _windows(blocks, c, w2, n_out):
    """The two (m, K, OH*OW) windows of the stacked blocks: the row above, the row itself."""
    m = blocks.shape[0]
    stacked = blocks.reshape(m, 6 * c, -1)
    return stacked[:, c:4 * c, :n_out], stacked[:, :, w2:w2 + n_out]


def phases_forward(x, weight, y):
    """y (N, O, H/2, W/2) = the stride-2, padding-1 3x3 convolution of x (N, C, H, W)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    o = weight.shape[0]
    h2, w2 = h // 2, w // 2
    above, row = _weight_blocks(xp, weight)

    def one(s):
        blocks = _phase_blocks(xp, x[s])
        win_above, win_row = _windows(blocks, c, w2, h2 * w2)
        out = y[s].reshape(-1, o, h2 * w2)
        part = workspace.borrow(xp, out.shape, y.dtype)
        xp.matmul(row, win_row, out=out)
        xp.matmul(above, win_above, out=part)
        out += part
        workspace.give_back(part)
        workspace.give_back(blocks)

    per_image = (6 * c * (h2 + 1) * w2 + 2 * o * h2 * w2) * x.dtype.itemsize
    parallel.map_chunks(one, parallel.batch_chunks(n, per_image), like=x)
    return y


def phases_backward(dy, cache):
    """(dx, dW, db) of ``phases_forward``'s convolution (a ``ConvCache``)."""
    xp = get_array_module(dy)
    x, weight = cache.x, cache.weight
    n, c, h, w = x.shape
    o = weight.shape[0]
    h2, w2 = h // 2, w // 2
    above, row = _weight_blocks(xp, weight)
    above_t, row_t = xp.ascontiguousarray(above.T), xp.ascontiguousarray(row.T)
    dx = xp.empty(x.shape, dtype=dy.dtype)

    def one(s):
        blocks = _phase_blocks(xp, x[s])
        win_above, win_row = _windows(blocks, c, w2, h2 * w2)
        dy_mat = dy[s].reshape(-1, o, h2 * w2)
        dy_t = dy_mat.transpose(0, 2, 1)  # dW transposed: the faster orientation here
        grad_above = xp.matmul(win_above, dy_t).sum(axis=0)  # (3C, O)
        grad_row = xp.matmul(win_row, dy_t).sum(axis=0)      # (6C, O)
        # dx: the products transposed, into the blocks' own layout (the
        # buffer is reused: x's blocks are no longer needed), then added back
        xp.matmul(row_t, dy_mat, out=win_row)
        part = workspace.borrow(xp, win_above.shape, dy.dtype)
        xp.matmul(above_t, dy_mat, out=part)
        win_above += part
        workspace.give_back(part)
        _blocks_to_image(blocks, dx[s])
        workspace.give_back(blocks)
        return grad_above, grad_row

    per_image = (6 * c * (h2 + 1) * w2 + 3 * c * h2 * w2 + o * h2 * w2) * x.dtype.itemsize
    parts = parallel.map_chunks(one, parallel.batch_chunks(n, per_image), like=x)
    grad_above = parallel.sum_in_order([p[0] for p in parts]).reshape(3, c, o)
    grad_row = parallel.sum_in_order([p[1] for p in parts]).reshape(6, c, o)
    dw = xp.empty(weight.shape, dtype=dy.dtype)
    for k, (ky, kx) in enumerate(ROW_ABOVE_TAPS):
        dw[:, :, ky, kx] = grad_above[k].T
    for k, (ky, kx) in enumerate(ROW_TAPS):
        dw[:, :, ky, kx] = grad_row[k].T
    db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None
    return dx, dw, db


def _blocks_to_image(d_blocks, dx):
    """dx (m, C, H, W) from the gradient of the six blocks (``_phase_blocks``'s
    adjoint): blocks 0 and 1 move one column back onto blocks 5 and 3 (what
    they read at column 0 was padding: dropped), then the four phases go
    back to their even/odd rows and columns (the zero row dropped)."""
    m, _, c, _ = d_blocks.shape
    h2, w2 = dx.shape[2] // 2, dx.shape[3] // 2
    grid = d_blocks.reshape(m, 6, c, h2 + 1, w2)
    grid[:, 0:2, :, :, 0] = 0
    flat = d_blocks.reshape(m, 6, c, -1)
    flat[:, 5:2:-2, :, w2:-1] += flat[:, 0:2, :, w2 + 1:]
    for block, (p, q) in UNSHIFTED_PHASES:
        dx[:, :, p::2, q::2] = grid[:, block, :, 1:]
