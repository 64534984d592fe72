"""Softmax cross-entropy on logits with integer class targets, forward and backward.

Numerically stable: the row maximum is subtracted before exponentiating, so
log-sum-exp never overflows (logits of +-1e4 give finite values), and the
log-probabilities are formed as differences, never as log(softmax).

Label smoothing follows torch: with eps = label_smoothing and C classes::

    loss_i = (1 - eps) * (-log p[i, y_i]) + (eps / C) * sum_c (-log p[i, c])

i.e. the cross-entropy against the target distribution
q = (1 - eps) * onehot(y) + eps / C, whose gradient is softmax - q.
"""
from ...backend import get_array_module
from . import reference_mode, reference_ops

REDUCTIONS = ("mean", "sum")


def cross_entropy_forward(logits, target, label_smoothing=0.0, reduction="mean", ignore=None):
    """Loss of ``logits`` (N, C) against integer ``target`` (N,).

    Returns ``loss, cache``; ``loss`` is a 0-d array on the logits' backend
    and dtype, averaged (``reduction='mean'``) or summed over the batch.
    ``ignore`` (a boolean (N,) array, or None): rows that add nothing to the
    loss or the gradient, and that the mean does not count (torch's
    ``ignore_index``; all rows ignored gives NaN for the mean, as in torch).
    """
    if reference_mode.on():
        return reference_ops.cross_entropy_forward(logits, target, label_smoothing, reduction, ignore)
    xp = get_array_module(logits)
    n, c = logits.shape
    rows = xp.arange(n)
    keep = None
    if ignore is not None:
        keep = ~ignore
        target = xp.where(keep, target, 0)  # any valid index; the row is zeroed below
        n = int(keep.sum())
    shifted = logits - logits.max(axis=1, keepdims=True)  # <= 0, max is exactly 0
    target_shifted = shifted[rows, target]
    shifted_row_sum = shifted.sum(axis=1) if label_smoothing else None
    exp = xp.exp(shifted, out=shifted)  # reuse the buffer: shifted is no longer needed
    sum_exp = exp.sum(axis=1)           # in [1, C]: its log is safe
    log_sum_exp = xp.log(sum_exp)

    per_sample = log_sum_exp - target_shifted  # -log p[i, y_i]
    if label_smoothing:
        # sum_c -log p[i, c] = C * lse_i - sum_c shifted[i, c]
        smooth = log_sum_exp * c - shifted_row_sum
        per_sample = per_sample * (1.0 - label_smoothing) + smooth * (label_smoothing / c)
    if keep is not None:
        per_sample = per_sample * keep
    total = per_sample.sum()
    scale = (1.0 / n if n else float("nan")) if reduction == "mean" else 1.0
    loss = xp.asarray(total * scale, dtype=logits.dtype)  # 0-d array, not a NumPy scalar

    probs = exp
    probs /= sum_exp[:, None]
    return loss, (probs, target, float(label_smoothing), scale, keep)


def cross_entropy_backward(dloss, cache):
    """dL/dlogits = dloss * scale * (softmax - q), q the (smoothed) target
    distribution and scale 1/N for the mean (1 for the sum)."""
    if reference_ops.owns(cache):
        return reference_ops.cross_entropy_backward(dloss, cache)
    probs, target, label_smoothing, scale, keep = cache
    xp = get_array_module(probs)
    n, c = probs.shape
    rows = xp.arange(n)
    off_target = label_smoothing / c          # q off the target class
    on_target = (1.0 - label_smoothing) + off_target
    # A fresh array: the cache stays intact, backward is a pure function.
    dlogits = probs - off_target if label_smoothing else probs.copy()
    # q at the target formed once in Python floats, so p - q is exact 0 when p == q.
    dlogits[rows, target] = probs[rows, target] - on_target
    dlogits *= scale
    if keep is not None:
        dlogits *= keep[:, None]
    if not (isinstance(dloss, (int, float)) and dloss == 1.0):
        dlogits *= dloss
    return dlogits
