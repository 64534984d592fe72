"""MaxPool2d, AvgPool2d and AdaptiveAvgPool2d: thin modules over functional/pool.py.

Arguments are stored exactly as given (an int stays an int, a list a list),
because torch prints them that way: ``MaxPool2d(kernel_size=3, stride=2, ...)``.
"""
from .checks import check_input, pair
from .functional.pool import (
    adaptive_avgpool2d_backward, adaptive_avgpool2d_forward, avgpool2d_backward,
    avgpool2d_forward, maxpool2d_backward, maxpool2d_forward,
)
from .functional.pool_geometry import adaptive_output_size, check_pool_args, pool_geometry
from .module import Module


def _checked_pairs(layer, kernel_size, stride, padding, dilation=1):
    """Validate the arguments at construction, so a bad layer fails where it is
    built rather than at its first forward."""
    try:
        k = pair(kernel_size, "kernel_size")
        s = k if stride is None else pair(stride, "stride")
        p, d = pair(padding, "padding"), pair(dilation, "dilation")
    except (TypeError, ValueError) as e:
        raise type(e)(f"{layer}: {e}") from None
    check_pool_args(layer, k, s, p, d)


class MaxPool2d(Module):
    """Max over each window (torch.nn.MaxPool2d); padding counts as -inf.  On ties
    the gradient goes to the first maximal position in the window (row-major)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 return_indices=False, ceil_mode=False):
        super().__init__()
        if return_indices:
            raise NotImplementedError("MaxPool2d: return_indices=True is not supported "
                                      "(the indices stay internal, for backward)")
        _checked_pairs("MaxPool2d", kernel_size, stride, padding, dilation)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, bool(ceil_mode)

    def forward(self, x):
        check_input("MaxPool2d", x, 4)
        pool_geometry("MaxPool2d", x.shape, self.kernel_size, self.stride, self.padding,
                      self.dilation, self.ceil_mode)
        y, cache = maxpool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                     self.dilation, self.ceil_mode)
        self._save(y, cache)
        return y

    def backward(self, dy):
        return maxpool2d_backward(dy, self._restore(dy))

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, "
                f"ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """Mean over each window (torch.nn.AvgPool2d), torch's divisor rules included."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        _checked_pairs("AvgPool2d", kernel_size, stride, padding)
        if divisor_override is not None and int(divisor_override) == 0:
            raise ValueError("AvgPool2d: divisor_override must be non-zero, got 0")
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode, self.count_include_pad = bool(ceil_mode), bool(count_include_pad)
        self.divisor_override = divisor_override

    def forward(self, x):
        check_input("AvgPool2d", x, 4)
        pool_geometry("AvgPool2d", x.shape, self.kernel_size, self.stride, self.padding,
                      1, self.ceil_mode)
        y, cache = avgpool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                     self.ceil_mode, self.count_include_pad,
                                     self.divisor_override)
        self._save(y, cache)
        return y

    def backward(self, dy):
        return avgpool2d_backward(dy, self._restore(dy))

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Average into a fixed ``output_size`` (torch.nn.AdaptiveAvgPool2d); an int,
    a pair, or a pair with None for "keep that input size"."""

    def __init__(self, output_size):
        super().__init__()
        sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,)
        if len(sizes) not in (1, 2) or (isinstance(output_size, (tuple, list)) and len(sizes) != 2) \
                or any(v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1)
                       for v in sizes):
            raise ValueError("AdaptiveAvgPool2d: output_size must be a positive int or a "
                             f"pair of positive ints/None, got {output_size!r}")
        self.output_size = output_size

    def forward(self, x):
        check_input("AdaptiveAvgPool2d", x, 4)
        adaptive_output_size("AdaptiveAvgPool2d", x.shape, self.output_size)
        y, cache = adaptive_avgpool2d_forward(x, self.output_size)
        self._save(y, cache)
        return y

    def backward(self, dy):
        return adaptive_avgpool2d_backward(dy, self._restore(dy))

    def extra_repr(self):
        return f"output_size={self.output_size}"
