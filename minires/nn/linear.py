"""Linear layer (torch.nn.Linear)."""
from .checks import check_input, whole
from .functional.linear import linear_forward, linear_backward
from .init import default_weight_and_bias
from .module import Module, Parameter


class Linear(Module):
    """``y = x @ W.T + b`` with ``W`` of shape (out_features, in_features),
    torch's layout and initialisation."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = whole(in_features, "Linear: in_features")
        self.out_features = whole(out_features, "Linear: out_features")
        w, b = default_weight_and_bias((self.out_features, self.in_features), bias)
        self.weight = Parameter(w)
        self.bias = Parameter(b) if bias else None

    def forward(self, x):
        check_input("Linear", x, 2, channels=self.in_features, like=self.weight.data)
        b = self.bias.data if self.bias is not None else None
        y, cache = linear_forward(x, self.weight.data, b)
        self._save(y, cache)
        return y

    def backward(self, dy):
        dx, dw, db = linear_backward(dy, self._restore(dy))
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
