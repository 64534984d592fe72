"""Batch normalisation, forward and backward, on a (N, C, M) view.

BatchNorm1d's (N, C) and (N, C, L) inputs and BatchNorm2d's (N, C, H, W) all
reshape to (N, C, M) (M = 1, L or H*W), so one op serves both: statistics are
per channel, over axes 0 and 2, n = N*M values each.

Speed notes (memory traffic dominates): reductions run over the contiguous
axis 2 first, then over N (pairwise summation along M keeps float32 sums
accurate); sums of products use einsum, which needs no temporary; per-channel
factors are folded into one scale and one shift, so the normalised input is
never materialised (the cache keeps ``x - mean`` and the per-channel inverse
std instead of x-hat).  Every array keeps the input's dtype: Python-float
constants do not promote float32 to float64.
"""
from collections import namedtuple

from ...backend import get_array_module

BatchNormCache = namedtuple(
    "BatchNormCache",
    ["batch_stats", "x_saved", "inv_std", "weight", "has_bias", "mean", "var"])
BatchNormCache.__doc__ = """What batch_norm_backward needs, and the statistics used.

batch_stats: True when the batch's own statistics normalised x (training, or
    no running statistics); False when fixed running statistics did (eval).
x_saved:     with batch statistics, x - mean (N, C, M); in eval, x itself
    when dweight is needed (it is centred in backward), else None.
inv_std:     1 / sqrt(var + eps), shape (C,).
weight:      gamma (C,), or None without affine.
mean, var:   the per-channel statistics used (biased variance for batch
    statistics); the module reads them to update its running averages.
"""


def _channel_sum(a):
    """Sum of a (N, C, M) array over N and M -> (C,): along the contiguous M
    first (pairwise, accurate), then over the batch."""
    return a.sum(axis=2).sum(axis=0)


def _channel_dot(a, b):
    """sum over N and M of a*b -> (C,), without an (N, C, M) temporary."""
    xp = get_array_module(a)
    return xp.einsum("ncm,ncm->nc", a, b).sum(axis=0)


def batch_norm_forward(x, weight, bias, eps=1e-5, running_mean=None, running_var=None):
    """Batch norm of ``x`` (N, C, M).  Returns ``y, cache``.

    With ``running_mean``/``running_var`` None, normalises with the batch's
    mean and biased variance (training, or a layer without running
    statistics); otherwise with the given running statistics (eval).
    ``weight``/``bias`` (C,) may be None (no affine / no bias).
    """
    if running_mean is None:
        n = x.shape[0] * x.shape[2]
        mean = _channel_sum(x) * (1.0 / n)
        x_centered = x - mean[:, None]
        # Two-pass (centred) variance: E[x^2] - mean^2 cancels badly in float32.
        var = _channel_dot(x_centered, x_centered) * (1.0 / n)
        batch_stats = True
    else:
        mean, var = running_mean, running_var
        batch_stats = False
    inv_std = 1.0 / (var + eps) ** 0.5

    scale = inv_std if weight is None else weight * inv_std
    if batch_stats:
        y = x_centered * scale[:, None]
        if bias is not None:
            y += bias[:, None]
        x_saved = x_centered
    else:
        # y = (x - mean) * scale + bias = x * scale + shift: two passes over x.
        shift = -mean * scale
        if bias is not None:
            shift += bias
        y = x * scale[:, None]
        y += shift[:, None]
        x_saved = x if weight is not None else None
    cache = BatchNormCache(batch_stats, x_saved, inv_std, weight, bias is not None,
                           mean, var)
    return y, cache


def batch_norm_backward(dy, cache):
    """Returns ``dx, dweight, dbias`` (dweight/dbias None when the layer has none).

    Training (batch statistics), with x-hat = (x - mean) * inv_std, dxhat = dy*gamma:
        dx = (1/n) * inv_std * (n*dxhat - sum(dxhat) - xhat * sum(dxhat*xhat))
    which, per channel, is dx = a*dy + b*(x - mean) + c with
        a = gamma*inv_std,  c = -a*sum(dy)/n,  b = -gamma*inv_std^2*sum(dy*xhat)/n.
    Eval (fixed running statistics): the layer is affine, dx = dy*gamma*inv_std.
    """
    batch_stats, x_saved, inv_std, weight, has_bias, mean, _ = cache
    n = dy.shape[0] * dy.shape[2]
    a = inv_std if weight is None else weight * inv_std
    need_dweight = weight is not None

    dbias = _channel_sum(dy) if (has_bias or batch_stats) else None

    if not batch_stats:
        dx = dy * a[:, None]
        dweight = None
        if need_dweight:
            x_centered = x_saved - mean[:, None]
            dweight = _channel_dot(dy, x_centered) * inv_std
        return dx, dweight, dbias if has_bias else None

    x_centered = x_saved
    dy_dot_xhat = _channel_dot(dy, x_centered) * inv_std  # = dweight
    b = a * inv_std * dy_dot_xhat * (-1.0 / n)
    c = a * dbias * (-1.0 / n)
    dx = dy * a[:, None]
    dx += x_centered * b[:, None]
    dx += c[:, None]
    dweight = dy_dot_xhat if need_dweight else None
    return dx, dweight, dbias if has_bias else None


def update_running_stats(running_mean, running_var, cache, n, factor):
    """In place: running = (1 - factor)*running + factor*batch, with the
    UNBIASED batch variance (x n/(n-1)) for running_var, as torch does."""
    keep = 1.0 - factor
    running_mean *= keep
    running_mean += cache.mean * factor
    running_var *= keep
    running_var += cache.var * (factor * n / (n - 1))
