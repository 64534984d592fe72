"""Flatten and Identity."""
from .checks import check_array
from .module import Module


class Flatten(Module):
    """Flattens dims start_dim..end_dim (torch.nn.Flatten, default 1..-1)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        check_array("Flatten", x)
        nd = x.ndim
        s, e = self.start_dim % nd, self.end_dim % nd
        if s > e:
            raise ValueError(f"Flatten: start_dim {self.start_dim} is after end_dim "
                             f"{self.end_dim} for an input of shape {tuple(x.shape)}")
        new = x.shape[:s] + (-1,) + x.shape[e + 1:]
        y = x.reshape(new)
        self._save(y, x.shape)
        return y

    def backward(self, dy):
        return dy.reshape(self._restore(dy))

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """``y = x`` and ``dx = dy``; ignores its arguments, as torch's does."""

    def __init__(self, *args, **kwargs):
        super().__init__()  # torch's Identity ignores its arguments too

    def forward(self, x):
        self._save(x, None)
        return x

    def backward(self, dy):
        self._restore(dy)
        return dy
