"""ReLU, LeakyReLU and Dropout modules."""
from .. import random as mr_random
from .checks import check_float
from .functional.activation import (dropout_backward, dropout_forward, leaky_relu_backward,
                                   leaky_relu_forward, relu_backward, relu_forward)
from .module import Module


class ReLU(Module):
    """``y = max(x, 0)``; the gradient at exactly 0 is 0, as in torch."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace  # accepted for torch compatibility; minires never aliases

    def forward(self, x):
        check_float("ReLU", x)
        y, mask = relu_forward(x)
        self._save(y, mask)
        return y

    def backward(self, dy):
        return relu_backward(dy, self._restore(dy))

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class LeakyReLU(Module):
    """torch.nn.LeakyReLU: x for x > 0, negative_slope * x otherwise (the
    worked example of docs/testing.md)."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = float(negative_slope)
        self.inplace = inplace  # accepted for torch compatibility; minires never aliases

    def forward(self, x):
        check_float("LeakyReLU", x)
        y, mask = leaky_relu_forward(x, self.negative_slope)
        self._save(y, mask)
        return y

    def backward(self, dy):
        return leaky_relu_backward(dy, self._restore(dy), self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Dropout(Module):
    """Inverted dropout (torch.nn.Dropout); the identity in eval mode."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p, self.inplace = float(p), inplace

    def forward(self, x):
        check_float("Dropout", x)
        if not self.training or self.p == 0.0:
            self._save(x, None)
            return x
        u = mr_random.uniform("dropout", x.shape, like=x)  # drawn on x's device
        y, mask = dropout_forward(x, self.p, u)
        self._save(y, mask)
        return y

    def backward(self, dy):
        mask = self._restore(dy)
        return dy if mask is None else dropout_backward(dy, mask)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"
