"""A layer written from scratch, forward and backward by hand, and checked.

    python examples/custom_layer.py

SiLU (also called swish): y = x * sigmoid(x).  Its derivative is
s + x * s * (1 - s) with s = sigmoid(x), computed in the backward from what
the forward kept.  ``minires.testing.check_module`` then draws inputs with
hypothesis and checks every promise a minires module makes (gradients by
finite differences, float32 in and out, no caches under no_grad, ...), and
``check_against_torch`` compares with ``torch.nn.SiLU`` when torch is here.
"""
import minires
from minires import nn
from minires.nn.checks import check_float


def silu_forward(x):
    xp = minires.get_array_module(x)  # numpy or cupy: never import numpy in a layer
    s = 1 / (1 + xp.exp(-x))
    return x * s, (x, s)


def silu_backward(dy, cache):
    x, s = cache
    return dy * (s + x * s * (1 - s))


class SiLU(nn.Module):
    def forward(self, x):
        check_float("SiLU", x)
        y, cache = silu_forward(x)
        self._save(y, cache)  # kept only outside minires.no_grad()
        return y

    def backward(self, dy):
        return silu_backward(dy, self._restore(dy))


def check():
    from minires.testing import arrays, check_against_torch, check_module, shapes
    inputs = arrays(shapes(min_dims=1, max_dims=4), kinks=())  # smooth: no kink to avoid
    check_module(SiLU, inputs, max_examples=10)
    print("SiLU: check_module passed (gradients, accumulation, dtype, no_grad, state_dict)")
    try:
        import torch
    except ImportError:
        print("torch is not installed: the comparison with torch.nn.SiLU is skipped")
        return
    check_against_torch(SiLU, torch.nn.SiLU, inputs, max_examples=10)
    print("SiLU: matches torch.nn.SiLU in float32 and float64 (output and dx)")


if __name__ == "__main__":
    check()
