"""2-D convolution layer (torch.nn.Conv2d)."""
from .checks import check_input, pair, whole
from .functional.conv import conv2d_forward, conv2d_backward, conv_padding, conv_output_size
from .init import default_weight_and_bias
from .module import Module, Parameter


class Conv2d(Module):
    """Applies a 2-D convolution over an NCHW input, with torch's arguments:
    ints or pairs, ``padding`` also "valid" or "same" (stride 1 only).
    Only zero padding (``padding_mode="zeros"``) is supported."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros"):
        super().__init__()
        self.in_channels = whole(in_channels, "Conv2d: in_channels")
        self.out_channels = whole(out_channels, "Conv2d: out_channels")
        self.groups = whole(groups, "Conv2d: groups")
        self.kernel_size = pair(kernel_size, "Conv2d: kernel_size")
        self.stride = pair(stride, "Conv2d: stride")
        self.dilation = pair(dilation, "Conv2d: dilation")
        if self.groups <= 0:
            raise ValueError(f"Conv2d: groups must be a positive integer, got {groups}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"Conv2d: in_channels ({self.in_channels}) and out_channels "
                             f"({self.out_channels}) must both be divisible by groups ({self.groups})")
        for name, v in (("kernel_size", self.kernel_size), ("stride", self.stride),
                        ("dilation", self.dilation)):
            if min(v) <= 0:
                raise ValueError(f"Conv2d: {name} must be positive, got {v}")
        if padding_mode != "zeros":
            raise ValueError(f"Conv2d: only padding_mode='zeros' is supported, got {padding_mode!r}")
        self.padding_mode = padding_mode

        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"Conv2d: padding must be an int, a pair, 'valid' or 'same', "
                                 f"got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"Conv2d: padding='same' is only supported with stride 1 "
                                 f"(as in torch), got stride={self.stride}")
            self.padding = padding  # torch keeps the string, and prints it
        else:
            self.padding = pair(padding, "Conv2d: padding")
            if min(self.padding) < 0:
                raise ValueError(f"Conv2d: padding must be non-negative, got {self.padding}")
        # The (top, bottom, left, right) the op uses; "same" may be asymmetric.
        self._pads = conv_padding(self.padding, self.kernel_size, self.dilation)

        w, b = default_weight_and_bias(
            (self.out_channels, self.in_channels // self.groups) + self.kernel_size, bias)
        self.weight = Parameter(w)
        self.bias = Parameter(b) if bias else None

    def forward(self, x):
        check_input("Conv2d", x, 4, channels=self.in_channels, like=self.weight.data)
        # Raises a clear Conv2d error when the kernel cannot fit even once.
        conv_output_size("Conv2d", x.shape[2:], self.kernel_size, self.stride, self._pads,
                         self.dilation)
        b = self.bias.data if self.bias is not None else None
        y, cache = conv2d_forward(x, self.weight.data, b, self.stride, self._pads,
                                  self.dilation, self.groups)
        self._save(y, cache)
        return y

    def backward(self, dy):
        dx, dw, db = conv2d_backward(dy, self._restore(dy))
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        # Exactly torch's _ConvNd.extra_repr: defaults are left out.
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s
