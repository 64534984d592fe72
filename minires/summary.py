"""A torchinfo-style table of a model: output shape, parameters and MACs per layer.

``summary(model, (3, 32, 32))`` runs one forward pass on zeros (under
``no_grad`` and in eval mode, so no cache is kept and no BatchNorm running
statistic moves) with every module's ``forward`` wrapped for the duration of
the call.  Each call of a module gives one row, in the order the calls begin,
indented by nesting depth; a module called twice (a shared ReLU) gives two.

Multiply-accumulates (MACs) are counted for Conv2d and Linear only:

* Conv2d: output elements x (in_channels / groups) x kh x kw
* Linear: output elements x in_features

BatchNorm, ReLU, pooling and the residual additions are counted as 0, the
convention behind torchvision's published figures (ResNet-18 at 224 x 224:
1.814 G MACs, which torchvision lists as "1.81 GFLOPS").  Biases are not counted.
"""
import numpy

from . import backend
from .grad_mode import no_grad
from .nn.norm import unfused

__all__ = ["summary", "ModelSummary", "SummaryRow"]

RULE_WIDTH = 96


class SummaryRow:
    """One module call: ``name`` (dotted path), ``type``, ``depth``,
    ``output_shape``, ``params`` (own parameters, None for a container) and ``macs``."""

    __slots__ = ("name", "type", "depth", "output_shape", "params", "macs", "is_leaf")

    def __init__(self, name, type_, depth, is_leaf, params):
        self.name, self.type, self.depth, self.is_leaf = name, type_, depth, is_leaf
        self.params = params
        self.output_shape = None
        self.macs = 0

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self):
        return (f"SummaryRow({self.name!r}, {self.type}, depth={self.depth}, "
                f"output_shape={self.output_shape}, params={self.params}, macs={self.macs})")


class ModelSummary:
    """The result of ``summary``: ``rows``, ``total_params``, ``trainable_params``,
    ``total_macs``, ``input_size``; ``str()`` gives the table."""

    def __init__(self, model_name, input_shape, rows, total_params, trainable_params,
                 param_bytes, input_bytes):
        self.model_name = model_name
        self.input_size = tuple(input_shape)
        self.rows = rows
        self.total_params = total_params
        self.trainable_params = trainable_params
        self.total_macs = sum(r.macs for r in rows)
        self.param_bytes = param_bytes
        self.input_bytes = input_bytes

    def __str__(self):
        name_w = max([len(self._label(r)) for r in self.rows] + [len(self.model_name), 24]) + 2
        head = (f"{'Layer (type)':<{name_w}}{'Output Shape':<22}{'Param #':>14}{'MACs':>18}")
        width = max(RULE_WIDTH, len(head))
        lines = ["=" * width, head, "=" * width,
                 f"{self.model_name:<{name_w}}{_shape(self.rows[0].output_shape) if self.rows else '':<22}"
                 f"{'--':>14}{'--':>18}"]
        for r in self.rows[1:]:
            params = f"{r.params:,}" if r.is_leaf else "--"
            macs = f"{r.macs:,}" if r.is_leaf else "--"
            lines.append(f"{self._label(r):<{name_w}}{_shape(r.output_shape):<22}"
                         f"{params:>14}{macs:>18}")
        lines += ["=" * width,
                  f"Total params: {self.total_params:,}",
                  f"Trainable params: {self.trainable_params:,}",
                  f"Non-trainable params: {self.total_params - self.trainable_params:,}",
                  f"Total MACs: {self.total_macs:,} ({self.total_macs / 1e9:.3f} G)",
                  "  (Conv2d and Linear multiply-accumulates only; BatchNorm, ReLU, pooling",
                  "   and additions count 0, as in torchvision's published figures)",
                  "=" * width,
                  f"Input size (MB): {self.input_bytes / 1e6:.2f}",
                  f"Params size (MB): {self.param_bytes / 1e6:.2f}",
                  "=" * width]
        return "\n".join(lines)

    def __repr__(self):
        return (f"ModelSummary({self.model_name}, input_size={self.input_size}, "
                f"total_params={self.total_params:,}, total_macs={self.total_macs:,})")

    @staticmethod
    def _label(r):
        leaf_name = r.name.rsplit(".", 1)[-1]
        return "  " * r.depth + f"{leaf_name} ({r.type})"


def _shape(s):
    return str(list(s)) if s is not None else "--"


def count_macs(module, output):
    """MACs of one call of ``module`` that produced ``output`` (0 unless Conv2d or Linear)."""
    from .nn.conv import Conv2d
    from .nn.linear import Linear
    if isinstance(module, Conv2d):
        kh, kw = (module.kernel_size if isinstance(module.kernel_size, tuple)
                  else (module.kernel_size, module.kernel_size))
        return int(output.size) * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, Linear):
        return int(output.size) * module.in_features
    return 0


def summary(model, input_size, batch_size=1, dtype="float32", device=None, verbose=True):
    """Return (and, with ``verbose``, print) a ``ModelSummary`` of ``model`` on an
    input of shape ``(batch_size, *input_size)`` filled with zeros.

    ``dtype`` must match the model's (``"float64"`` after ``model.double()``);
    ``device`` defaults to where the model's parameters live.  The model's
    train/eval modes are restored afterwards and no cache is left behind.
    """
    input_shape = (int(batch_size),) + tuple(int(s) for s in input_size)
    params = model.parameters()
    if device is None:
        device = backend.device_of(params[0].data) if params else "cpu"
    x = backend.to_device(numpy.zeros(input_shape, dtype=dtype), device)

    rows = []
    modes = {id(m): m.training for m in model.modules()}
    wrapped = []
    depth = [0]

    def wrap(name, m):
        own_forward = m.forward
        is_leaf = not m._modules

        def forward(*args, **kwargs):
            row = SummaryRow(name or type(m).__name__, type(m).__name__, depth[0], is_leaf,
                             sum(int(p.size) for p in m._parameters.values() if p is not None))
            rows.append(row)  # appended on entry, so a container precedes its children
            depth[0] += 1
            try:
                y = own_forward(*args, **kwargs)
            finally:
                depth[0] -= 1
            row.output_shape = tuple(y.shape) if hasattr(y, "shape") else None
            row.macs = count_macs(m, y) if is_leaf else 0
            return y

        object.__setattr__(m, "forward", forward)  # an instance attribute shadows the method
        wrapped.append(m)

    try:
        for name, m in model.named_modules():
            wrap(name, m)
        model.eval()
        with no_grad(), unfused():  # every ReLU call gets its row, as in torch's tools
            model(x)
    finally:
        for m in wrapped:
            m.__dict__.pop("forward", None)
        for m in model.modules():
            object.__setattr__(m, "training", modes.get(id(m), m.training))

    total = sum(int(p.size) for p in params)
    param_bytes = sum(int(p.data.nbytes) for p in params)
    # Every minires Parameter is trained, so trainable == total.  total_macs sums
    # the leaf rows only (a container's MACs are its children's).
    result = ModelSummary(type(model).__name__, input_shape, rows, total, total, param_bytes,
                          int(numpy.prod(input_shape)) * numpy.dtype(dtype).itemsize)
    if verbose:
        print(result)
    return result
