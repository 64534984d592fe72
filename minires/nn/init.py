"""Parameter initialisers matching torch.nn.init, drawn from the ``init`` stream.

Arrays are drawn on the host as float32; ``module.to(...)`` moves them.  The
host-side draw is why this file (alone under nn/) uses NumPy through
``minires.random`` rather than a layer's input.
"""
import math

from .. import random as mr_random

DEFAULT_DTYPE = "float32"


def fan_in_and_fan_out(shape):
    """torch's _calculate_fan_in_and_fan_out: dim 1 is fan-in, dim 0 fan-out,
    both times the receptive field (kernel area)."""
    receptive = 1
    for s in shape[2:]:
        receptive *= s
    return shape[1] * receptive, shape[0] * receptive


def uniform(shape, bound, dtype=DEFAULT_DTYPE):
    return mr_random.generator("init").uniform(-bound, bound, size=shape).astype(dtype)


def normal(shape, std, dtype=DEFAULT_DTYPE):
    return (mr_random.generator("init").standard_normal(size=shape) * std).astype(dtype)


def kaiming_uniform(shape, a=0.0, dtype=DEFAULT_DTYPE):
    """torch.nn.init.kaiming_uniform_(w, a, mode='fan_in', nonlinearity='leaky_relu')."""
    fan_in, _ = fan_in_and_fan_out(shape)
    gain = math.sqrt(2.0 / (1 + a * a))
    bound = gain * math.sqrt(3.0 / fan_in)
    return uniform(shape, bound, dtype)


def kaiming_normal(shape, mode="fan_out", dtype=DEFAULT_DTYPE):
    """torch.nn.init.kaiming_normal_(w, mode=mode, nonlinearity='relu'), as
    torchvision initialises its convolutions."""
    fan_in, fan_out = fan_in_and_fan_out(shape)
    fan = fan_out if mode == "fan_out" else fan_in
    return normal(shape, math.sqrt(2.0) / math.sqrt(fan), dtype)


def default_weight_and_bias(weight_shape, bias):
    """torch's default for Linear and Conv2d: kaiming_uniform(a=sqrt(5)) for the
    weight (bound 1/sqrt(fan_in)) and U(-1/sqrt(fan_in), 1/sqrt(fan_in)) bias."""
    w = kaiming_uniform(weight_shape, a=math.sqrt(5))
    b = None
    if bias:
        fan_in, _ = fan_in_and_fan_out(weight_shape)
        b = uniform((weight_shape[0],), 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)
    return w, b
