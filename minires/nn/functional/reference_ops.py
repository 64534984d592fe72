"""Every functional op as a few plain lines: the version to read and step through.

``with minires.nn.functional.reference():`` makes the fast ops call these.
No threads, no scratch buffers, no chunks, no fused passes: each forward
returns ``(y, cache)``, each backward ``(dy, cache)`` its gradients, and a
cache is a ``Cache`` so that the fast backward knows to hand it over here.
The tests hold these to torch and the fast paths to these.
"""
from types import SimpleNamespace

from ..checks import pair
from ...backend import get_array_module
from .conv_geometry import conv_output_size, conv_padding
from .pool_geometry import adaptive_bins, adaptive_output_size, pool_geometry


class Cache(SimpleNamespace):
    """What a reference op's backward needs; the fields are named per op."""


def owns(cache):
    """True when ``cache`` came from a reference forward."""
    return isinstance(cache, Cache)


def _window(a, ky, kx, stride, dilation, out):
    """a[..., oy*sh + ky*dh, ox*sw + kx*dw] for every output pixel (oy, ox): a view."""
    (sh, sw), (dh, dw), (oh, ow) = stride, dilation, out
    return a[..., ky * dh:ky * dh + sh * (oh - 1) + 1:sh, kx * dw:kx * dw + sw * (ow - 1) + 1:sw]


def _padded(x, top, bottom, left, right, fill=0.0):
    xp = get_array_module(x)
    n, c, h, w = x.shape
    out = xp.full((n, c, h + top + bottom, w + left + right), fill, dtype=x.dtype)
    out[:, :, top:top + h, left:left + w] = x
    return out


# ---------------------------------------------------------------- convolution

def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """y[n, o, i, j] = b[o] + sum over c, ky, kx of
    W[o, c, ky, kx] * x_padded[n, c of o's group, i*sh + ky*dh, j*sw + kx*dw]."""
    xp = get_array_module(x, weight)
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    n, c, h, w = x.shape
    o, c_per_group, kh, kw = weight.shape
    pads = conv_padding(padding, (kh, kw), dilation)
    out = conv_output_size("conv2d", (h, w), (kh, kw), stride, pads, dilation)
    if c != c_per_group * groups:
        raise ValueError(f"conv2d: expected {c_per_group * groups} input channels "
                         f"(weight {tuple(weight.shape)}, groups={groups}), got shape {tuple(x.shape)}")
    x_padded = _padded(x, *pads)
    x_groups = x_padded.reshape((n, groups, c_per_group) + x_padded.shape[2:])
    w_groups = weight.reshape(groups, o // groups, c_per_group, kh, kw)
    y = xp.zeros((n, groups, o // groups) + out, dtype=x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            window = _window(x_groups, ky, kx, stride, dilation, out)  # (N, G, C/G, oh, ow)
            y += xp.einsum("goc,ngcij->ngoij", w_groups[..., ky, kx], window)
    y = y.reshape((n, o) + out)
    if bias is not None:
        y += bias.reshape(1, o, 1, 1)
    return y, Cache(x_padded=x_padded, x_shape=x.shape, weight=weight, has_bias=bias is not None,
                    stride=stride, pads=pads, dilation=dilation, groups=groups)


def conv2d_backward(dy, cache):
    """Each forward product undone:  dW[.., ky, kx] = sum of dy * window,  and
    every window of dx_padded collects W[.., ky, kx]^T @ dy.  Returns (dx, dW, db)."""
    xp = get_array_module(dy)
    weight, g = cache.weight, cache.groups
    o, c_per_group, kh, kw = weight.shape
    n, _, oh, ow = dy.shape
    top, _, left, _ = cache.pads
    h, w = cache.x_shape[2:]
    x_groups = cache.x_padded.reshape((n, g, c_per_group) + cache.x_padded.shape[2:])
    dx_groups = xp.zeros_like(x_groups)
    w_groups = weight.reshape(g, o // g, c_per_group, kh, kw)
    dy_groups = dy.reshape(n, g, o // g, oh, ow)
    dw = xp.zeros_like(w_groups)
    for ky in range(kh):
        for kx in range(kw):
            window = _window(x_groups, ky, kx, cache.stride, cache.dilation, (oh, ow))
            dw[..., ky, kx] = xp.einsum("ngoij,ngcij->goc", dy_groups, window)
            _window(dx_groups, ky, kx, cache.stride, cache.dilation, (oh, ow))[...] += xp.einsum(
                "goc,ngoij->ngcij", w_groups[..., ky, kx], dy_groups)
    dx = dx_groups.reshape(cache.x_padded.shape)[:, :, top:top + h, left:left + w]
    db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None
    return xp.ascontiguousarray(dx), dw.reshape(weight.shape), db


# ---------------------------------------------------------------- batch norm

def batch_norm_forward(x, weight, bias, eps=1e-5, running_mean=None, running_var=None,
                       batch_mean_var=None, relu=False):
    """x (N, C, M): x_hat = (x - mean) / sqrt(var + eps) per channel, over N and M;
    y = gamma * x_hat + beta (then a ReLU with ``relu=True``).  The batch's own
    statistics (biased variance) unless running ones are given."""
    xp = get_array_module(x)
    batch_stats = running_mean is None
    if batch_mean_var is not None:  # SyncBatchNorm: every rank's batch
        mean, var = batch_mean_var
    elif batch_stats:
        mean = x.mean(axis=(0, 2))
        var = ((x - mean[:, None]) ** 2).mean(axis=(0, 2))
    else:
        mean, var = running_mean, running_var
    inv_std = 1.0 / xp.sqrt(var + eps)
    centred = x - mean[:, None]
    y = centred * inv_std[:, None]
    if weight is not None:
        y = y * weight[:, None]
    if bias is not None:
        y = y + bias[:, None]
    relu_mask = None
    if relu:
        relu_mask = y > 0
        y = xp.maximum(y, 0)
    return y, Cache(batch_stats=batch_stats, centred=centred, inv_std=inv_std, weight=weight,
                    has_bias=bias is not None, mean=mean, var=var, relu_mask=relu_mask)


def batch_norm_backward(dy, cache, n=None, reduce_sums=None):
    """With x_hat = (x - mean) * inv_std and n values per channel, for batch
    statistics::

        dx = gamma * inv_std / n * (n*dy - sum(dy) - x_hat * sum(dy * x_hat))

    and dx = gamma * inv_std * dy for fixed ones.
    ``reduce_sums``/``n``: SyncBatchNorm's global sums and count."""
    if cache.relu_mask is not None:
        dy = dy * cache.relu_mask
    inv_std, centred = cache.inv_std[:, None], cache.centred
    scale = cache.inv_std if cache.weight is None else cache.weight * cache.inv_std
    sum_dy = dy.sum(axis=(0, 2))
    sum_dy_centred = (dy * centred).sum(axis=(0, 2))
    dweight = sum_dy_centred * cache.inv_std if cache.weight is not None else None
    dbias = sum_dy if cache.has_bias else None
    if not cache.batch_stats:
        return dy * scale[:, None], dweight, dbias
    n = dy.shape[0] * dy.shape[2] if n is None else n
    if reduce_sums is not None:
        sum_dy, sum_dy_centred = reduce_sums(sum_dy, sum_dy_centred)
    x_hat, sum_dy_x_hat = centred * inv_std, sum_dy_centred * cache.inv_std
    dx = (scale / n)[:, None] * (n * dy - sum_dy[:, None] - x_hat * sum_dy_x_hat[:, None])
    return dx, dweight, dbias


# ---------------------------------------------------------------- ReLU, linear, the residual sum

def relu_forward(x):
    """max(x, 0); the gradient at exactly 0 is 0, as in torch."""
    xp = get_array_module(x)
    return xp.maximum(x, 0), Cache(mask=x > 0)


def relu_backward(dy, cache):
    """dx = dy where the input was positive, 0 elsewhere."""
    return dy * cache.mask


def linear_forward(x, weight, bias=None):
    """y = x W^T + b."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y, Cache(x=x, weight=weight, has_bias=bias is not None)


def linear_backward(dy, cache):
    """dx = dy W,  dW = dy^T x,  db = sum of dy over the batch."""
    db = dy.sum(axis=0) if cache.has_bias else None
    return dy @ cache.weight, dy.T @ cache.x, db


def add(a, b):
    """The residual sum; its backward hands dy to both operands unchanged."""
    return a + b


# ---------------------------------------------------------------- cross-entropy

def cross_entropy_forward(logits, target, label_smoothing=0.0, reduction="mean", ignore=None):
    """``loss_i = -sum_c q[i, c] * log softmax(logits)[i, c]``, with
    ``q = (1 - eps) * onehot(target) + eps / C``; the mean (or sum) over the
    rows that ``ignore`` does not mark."""
    xp = get_array_module(logits)
    n, c = logits.shape
    keep = xp.ones(n, dtype=bool) if ignore is None else ~ignore
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    q = xp.full((n, c), label_smoothing / c, dtype=logits.dtype)
    q[xp.arange(n), xp.where(keep, target, 0)] += 1.0 - label_smoothing
    per_row = -(q * log_p).sum(axis=1) * keep
    count = int(keep.sum())
    scale = (1.0 / count if count else float("nan")) if reduction == "mean" else 1.0
    loss = xp.asarray(per_row.sum() * scale, dtype=logits.dtype)
    return loss, Cache(p=xp.exp(log_p), q=q, keep=keep, scale=scale)


def cross_entropy_backward(dloss, cache):
    """dL/dlogits = dloss * scale * (softmax - q), zero on ignored rows."""
    return dloss * cache.scale * (cache.p - cache.q) * cache.keep[:, None]


# ---------------------------------------------------------------- pooling

def maxpool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """The max of each window (padding counts as -inf); the cache keeps which
    kernel offset won, the first one on ties."""
    xp = get_array_module(x)
    k, s, p, d, out = pool_geometry("maxpool2d", x.shape, kernel_size, stride, padding, dilation,
                                    ceil_mode)
    x_padded = _padded(x, *_pool_pads(x.shape, k, s, p, d, out), fill=-xp.inf)
    windows = xp.stack([_window(x_padded, ky, kx, s, d, out)
                        for ky in range(k[0]) for kx in range(k[1])])
    return windows.max(axis=0), Cache(winner=windows.argmax(axis=0), padded_shape=x_padded.shape,
                                      x_shape=x.shape, k=k, s=s, p=p, d=d)


def maxpool2d_backward(dy, cache):
    """Each dy goes to its window's winner; overlapping windows add up."""
    xp = get_array_module(dy)
    dx_padded = xp.zeros(cache.padded_shape, dtype=dy.dtype)
    k, out = cache.k, dy.shape[2:]
    for offset in range(k[0] * k[1]):
        _window(dx_padded, offset // k[1], offset % k[1], cache.s, cache.d, out)[...] += \
            dy * (cache.winner == offset)
    return _crop(dx_padded, cache.p, cache.x_shape)


def avgpool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                      count_include_pad=True, divisor_override=None):
    """The sum of each window over its divisor: the window's size within the
    padded input (``count_include_pad``) or within the input itself."""
    xp = get_array_module(x)
    k, s, p, d, out = pool_geometry("avgpool2d", x.shape, kernel_size, stride, padding, 1,
                                    ceil_mode)
    h, w = x.shape[2:]
    x_padded = _padded(x, *_pool_pads(x.shape, k, s, p, d, out))
    counted = xp.zeros((1, 1) + x_padded.shape[2:], dtype=x.dtype)  # pixels a divisor counts
    if count_include_pad:  # the input and its padding, not ceil_mode's overhang
        counted[..., :h + 2 * p[0], :w + 2 * p[1]] = 1
    else:
        counted[..., p[0]:p[0] + h, p[1]:p[1] + w] = 1
    offsets = [(ky, kx) for ky in range(k[0]) for kx in range(k[1])]
    total = sum(_window(x_padded, ky, kx, s, d, out) for ky, kx in offsets)
    divisor = (xp.asarray(divisor_override, dtype=x.dtype) if divisor_override is not None
               else sum(_window(counted, ky, kx, s, d, out) for ky, kx in offsets))
    return total / divisor, Cache(divisor=divisor, padded_shape=x_padded.shape, x_shape=x.shape,
                                  k=k, s=s, p=p)


def avgpool2d_backward(dy, cache):
    """Each window's dy / divisor spread over the window."""
    xp = get_array_module(dy)
    dx_padded = xp.zeros(cache.padded_shape, dtype=dy.dtype)
    k, share = cache.k, dy / cache.divisor
    for ky in range(k[0]):
        for kx in range(k[1]):
            _window(dx_padded, ky, kx, cache.s, (1, 1), dy.shape[2:])[...] += share
    return _crop(dx_padded, cache.p, cache.x_shape)


def _pool_pads(x_shape, k, s, p, d, out):
    """(top, bottom, left, right): p, and at the bottom/right as much as the
    windows reach (ceil_mode's last window may reach past the padding)."""
    h, w = x_shape[2:]
    reach_h, reach_w = s[0] * (out[0] - 1) + d[0] * (k[0] - 1) + 1, s[1] * (out[1] - 1) + d[1] * (k[1] - 1) + 1
    return p[0], max(p[0], reach_h - h - p[0]), p[1], max(p[1], reach_w - w - p[1])


def _crop(a, p, shape):
    h, w = shape[2:]
    return a[:, :, p[0]:p[0] + h, p[1]:p[1] + w]


def adaptive_avgpool2d_forward(x, output_size):
    """The mean of each of torch's bins [floor(i*H/OH), ceil((i+1)*H/OH)) x (the same for W)."""
    xp = get_array_module(x)
    oh, ow = adaptive_output_size("adaptive_avgpool2d", x.shape, output_size)
    rows, cols = adaptive_bins(x.shape[2], oh), adaptive_bins(x.shape[3], ow)
    y = xp.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            y[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return y, Cache(x_shape=x.shape, rows=rows, cols=cols)


def adaptive_avgpool2d_backward(dy, cache):
    """Each bin's dy spread evenly over the bin; overlapping bins add up."""
    xp = get_array_module(dy)
    dx = xp.zeros(cache.x_shape, dtype=dy.dtype)
    for i, (r0, r1) in enumerate(cache.rows):
        for j, (c0, c1) in enumerate(cache.cols):
            dx[:, :, r0:r1, c0:c1] += dy[:, :, i:i + 1, j:j + 1] / ((r1 - r0) * (c1 - c0))
    return dx
