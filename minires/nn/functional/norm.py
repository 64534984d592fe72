"""Batch normalisation, forward and backward, on a (N, C, M) view.

BatchNorm1d's (N, C) and (N, C, L) inputs and BatchNorm2d's (N, C, H, W) all
reshape to (N, C, M) (M = 1, L or H*W), so one op serves both: statistics are
per channel, over axes 0 and 2, n = N*M values each.

Every pass runs in batch chunks on all cores, per-channel sums added in
chunk order (the same bits on any thread count): within a chunk over its
few images first (whole (C, M) slabs added, fast even for short rows), then
along the contiguous axis 2 (pairwise, accurate in float32).  The cache
keeps x itself, not the normalised copy: ``x - mean`` exists a chunk at a
time.  Why: docs/performance.md.  The plain version:
``reference_ops.batch_norm_forward``.
"""
from collections import namedtuple

from ...backend import get_array_module
from ... import parallel
from . import reference_mode, reference_ops

BatchNormCache = namedtuple(
    "BatchNormCache",
    ["batch_stats", "x_saved", "inv_std", "weight", "has_bias", "mean", "var", "relu_mask"],
    defaults=(None,))
BatchNormCache.__doc__ = """What batch_norm_backward needs, and the statistics used.

* ``batch_stats``: True when the batch's own statistics normalised x
  (training, or no running statistics); False when fixed running statistics
  did (eval).
* ``x_saved``: the input x (N, C, M), not a copy (backward centres it a chunk
  at a time); in eval None when dweight is not needed.
* ``inv_std``: 1 / sqrt(var + eps), shape (C,).
* ``weight``: gamma (C,), or None without affine.
* ``has_bias``: whether dbias is wanted.
* ``mean``, ``var``: the per-channel statistics used (biased variance for
  batch statistics); the module reads them to update its running averages.
* ``relu_mask``: y > 0 when a ReLU was applied in the same pass
  (``relu=True``), else None.
"""


ROWS_MAX_BYTES = 256 << 10  # full per-channel rows up to this size (see _rows)


def _rows(v, m):
    """The per-channel vector v (C,) as a (C, M) operand for a chunk (n, C, M):
    full rows up to ``ROWS_MAX_BYTES`` (NumPy combines two full arrays faster
    than it broadcasts a (C, 1) one), else the (C, 1) broadcast."""
    xp = get_array_module(v)
    if v.shape[0] * m * v.dtype.itemsize > ROWS_MAX_BYTES:
        return v[:, None]
    rows = xp.empty((v.shape[0], m), dtype=v.dtype)
    rows[...] = v[:, None]
    return rows


def _chunk_sum(a):
    """Sum of a chunk (n, C, M) over n and M -> (C,): the chunk's images
    first (whole slabs added: 1.2-2.3x faster than along M first when rows
    are short, as 6x6 or 8x8 images), then along M (pairwise)."""
    return a.sum(axis=0).sum(axis=1)


def _chunk_dot(a, b):
    """sum over n and M of a*b for a chunk -> (C,): one chunk-sized product,
    summed as ``_chunk_sum``."""
    xp = get_array_module(a)
    return _chunk_sum(xp.multiply(a, b))


def _channel_sum(a):
    """Sum of a (N, C, M) array over N and M -> (C,), by batch chunks."""
    return parallel.sum_in_order(parallel.map_chunks(lambda s: _chunk_sum(a[s]),
                                                     parallel.batch_slices(a), like=a))


def _channel_dot(a, b):
    """sum over N and M of a*b -> (C,), without an (N, C, M) temporary."""
    return parallel.sum_in_order(parallel.map_chunks(lambda s: _chunk_dot(a[s], b[s]),
                                                     parallel.batch_slices(a), like=a))


def _relu_in_place(y, mask):
    """mask = y > 0, y = max(y, 0): relu_forward's two operations, on a chunk
    that is still in the cache (the same bits as a separate ReLU pass)."""
    xp = get_array_module(y)
    xp.greater(y, 0, out=mask)
    xp.maximum(y, 0, out=y)


def _affine(x, scale, shift, out=None, relu_mask=None):
    """out = x * scale + shift per channel, by batch chunks (shift may be None);
    then a ReLU in the same pass when ``relu_mask`` (bool, like x) is given."""
    xp = get_array_module(x)
    out = xp.empty_like(x) if out is None else out
    scale_rows = _rows(scale, x.shape[2])
    shift_rows = None if shift is None else _rows(shift, x.shape[2])

    def one(s):
        xp.multiply(x[s], scale_rows, out=out[s])
        if shift is not None:
            out[s] += shift_rows
        if relu_mask is not None:
            _relu_in_place(out[s], relu_mask[s])
    parallel.map_chunks(one, parallel.batch_slices(x), like=x)
    return out


def combine_moments(parts):
    """(count, mean, M2) of pieces of a batch -> (count, mean, M2) of the whole,
    added in the order given (Chan et al.'s parallel formula, as torch's
    batch_norm_gather_stats_with_counts).  M2 is the centred sum of squares:
    never E[x^2] - mean^2, which cancels badly in float32.  Batch chunks use
    it here, SyncBatchNorm for the ranks' shards."""
    n = sum(p[0] for p in parts)
    mean = parallel.sum_in_order([p[1] * (p[0] / n) for p in parts])
    m2 = parallel.sum_in_order([p[2] + (p[1] - mean) ** 2 * p[0] for p in parts])
    return n, mean, m2


def moments(x):
    """(count, mean, M2) per channel of x (N, C, M), in one pass over memory:
    each batch chunk's count, mean and centred sum of squares (two passes
    over the chunk while it is in the cache), combined in chunk order."""

    def one(s):
        xs = x[s]
        count = xs.shape[0] * xs.shape[2]
        mean = _chunk_sum(xs) * (1.0 / count)
        centred = xs - _rows(mean, xs.shape[2])
        centred *= centred
        return count, mean, _chunk_sum(centred)

    return combine_moments(parallel.map_chunks(one, parallel.batch_slices(x), like=x))


def _mean_var(x):
    """Per-channel mean and biased variance of x (N, C, M)."""
    n, mean, m2 = moments(x)
    return mean, m2 * (1.0 / n)


def batch_norm_forward(x, weight, bias, eps=1e-5, running_mean=None, running_var=None,
                       batch_mean_var=None, relu=False):
    """Batch norm of ``x`` (N, C, M).  Returns ``y, cache``.

    With ``running_mean``/``running_var`` None, normalises with the batch's
    mean and biased variance (training, or a layer without running
    statistics); otherwise with the given running statistics (eval).
    ``weight``/``bias`` (C,) may be None (no affine / no bias).
    ``batch_mean_var``: the batch statistics computed elsewhere (SyncBatchNorm:
    over every rank's shard), used as this batch's own.
    ``relu=True``: y = relu(batch_norm(x)), the ReLU applied to each chunk
    while it is in the cache (one pass less each way), and undone by
    ``batch_norm_backward`` the same way.
    """
    if reference_mode.on():
        return reference_ops.batch_norm_forward(x, weight, bias, eps, running_mean, running_var,
                                                batch_mean_var, relu)
    xp = get_array_module(x)
    mask = xp.empty(x.shape, dtype=bool) if relu else None
    batch_stats = running_mean is None
    if batch_mean_var is not None:
        mean, var = batch_mean_var
    elif batch_stats:
        mean, var = _mean_var(x)
    else:
        mean, var = running_mean, running_var
    inv_std = 1.0 / (var + eps) ** 0.5

    scale = inv_std if weight is None else weight * inv_std
    if batch_stats:
        y = xp.empty_like(x)
        m = x.shape[2]
        mean_rows, scale_rows = _rows(mean, m), _rows(scale, m)
        bias_rows = None if bias is None else _rows(bias, m)

        # (x - mean) * scale, not x * scale + (bias - mean * scale): one pass
        # more, but no cancellation that rounds values near 0 (the next
        # ReLU's kink) to exactly 0.
        def one(s):  # y = (x - mean) * scale + bias, a chunk at a time
            xp.subtract(x[s], mean_rows, out=y[s])
            y[s] *= scale_rows
            if bias is not None:
                y[s] += bias_rows
            if relu:
                _relu_in_place(y[s], mask[s])
        parallel.map_chunks(one, parallel.batch_slices(x), like=x)
        x_saved = x
    else:
        # y = (x - mean) * scale + bias = x * scale + shift: two passes over x.
        shift = -mean * scale
        if bias is not None:
            shift += bias
        y = _affine(x, scale, shift, relu_mask=mask)
        x_saved = x if weight is not None else None
    cache = BatchNormCache(batch_stats, x_saved, inv_std, weight, bias is not None,
                           mean, var, mask)
    return y, cache


def batch_norm_backward(dy, cache, n=None, reduce_sums=None):
    """Returns ``dx, dweight, dbias`` (dweight/dbias None when the layer has none).

    Training (batch statistics), with x-hat = (x - mean) * inv_std, dxhat = dy*gamma::

        dx = (1/n) * inv_std * (n*dxhat - sum(dxhat) - xhat * sum(dxhat*xhat))

    which, per channel, is dx = a*dy + b*(x - mean) + c with::

        a = gamma*inv_std,  c = -a*sum(dy)/n,  b = -gamma*inv_std^2*sum(dy*xhat)/n.

    Eval (fixed running statistics): the layer is affine, dx = dy*gamma*inv_std.
    After a forward with ``relu=True``, ``dy`` is the gradient of the ReLU's
    output: it is masked (relu_backward's product) chunk by chunk on the way.

    SyncBatchNorm: ``reduce_sums(sum_dy, sum_dy_xc)`` turns this shard's two
    sums into the global batch's, and ``n`` is the global count; dweight and
    dbias stay this shard's share (the gradient allreduce adds the shares).
    """
    if reference_ops.owns(cache):
        return reference_ops.batch_norm_backward(dy, cache, n, reduce_sums)
    xp = get_array_module(dy)
    batch_stats, x, inv_std, weight, has_bias, mean, _, mask = cache
    n = dy.shape[0] * dy.shape[2] if n is None else n
    a = inv_std if weight is None else weight * inv_std
    need_dweight = weight is not None

    def dy_at(s):  # dy of the batch norm's own output, for one chunk
        return dy[s] if mask is None else xp.multiply(dy[s], mask[s])

    if not batch_stats:
        if mask is not None:  # eval-mode backward is rare: mask once, then as usual
            dy, mask = xp.multiply(dy, mask), None
        dx = _affine(dy, a, None)
        dweight = None
        if need_dweight:
            x_centered = x - mean[:, None]
            dweight = _channel_dot(dy, x_centered) * inv_std
        return dx, dweight, _channel_sum(dy) if has_bias else None

    mean_rows = _rows(mean, dy.shape[2])

    def sums(s):  # sum(dy) and sum(dy * (x - mean)) of a chunk: one read of dy and x
        dys = dy_at(s)
        centred = x[s] - mean_rows
        centred *= dys
        return _chunk_sum(dys), _chunk_sum(centred)

    parts = parallel.map_chunks(sums, parallel.batch_slices(dy), like=dy)
    sum_dy = parallel.sum_in_order([p[0] for p in parts])      # = dbias, when there is a bias
    sum_dy_xc = parallel.sum_in_order([p[1] for p in parts])   # sum(dy * (x - mean))
    dweight = sum_dy_xc * inv_std                               # = sum(dy * x-hat)
    dbias = sum_dy
    if reduce_sums is not None:  # SyncBatchNorm: the whole global batch's sums
        sum_dy, sum_dy_xc = reduce_sums(sum_dy, sum_dy_xc)
    b = a * inv_std * (sum_dy_xc * inv_std) * (-1.0 / n)
    c = a * sum_dy * (-1.0 / n)
    dx = xp.empty_like(dy)
    a_rows, b_rows, c_rows = (_rows(v, dy.shape[2]) for v in (a, b, c))

    def one(s):  # dx = a*dy + b*(x - mean) + c, a chunk at a time
        centred = x[s] - mean_rows
        centred *= b_rows
        xp.multiply(dy_at(s), a_rows, out=dx[s])
        dx[s] += centred
        dx[s] += c_rows
    parallel.map_chunks(one, parallel.batch_slices(dy), like=dy)
    return dx, dweight if need_dweight else None, dbias if has_bias else None
