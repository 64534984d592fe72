"""ReLU and dropout, forward and backward side by side."""


def relu_forward(x):
    mask = x > 0  # the gradient at exactly 0 is 0, as in torch
    return x * mask, mask


def relu_backward(dy, mask):
    return dy * mask


def dropout_forward(x, p, uniform_draw):
    """Inverted dropout: keep each value with probability 1-p and scale by
    1/(1-p), so eval mode is the identity.  ``uniform_draw`` is an array of
    U[0,1) draws shaped like x (drawn by the caller from a seeded stream)."""
    if p >= 1.0:
        scale_mask = x * 0
    else:
        xp_mask = uniform_draw >= p
        scale_mask = xp_mask.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
    return x * scale_mask, scale_mask


def dropout_backward(dy, scale_mask):
    return dy * scale_mask
