"""A trained model as a standard ONNX graph, for ONNX Runtime, browsers, phones.

``export_onnx(model, path)`` walks the model and asks each module's
*emitter* for its ONNX nodes.  An emitter is the module's ``forward``
written again as graph nodes, line for line (a block's emitter reads like
its forward: conv, batch norm, ReLU, the addition of the skip connection),
so the graph computes what minires computes in eval mode.  A module without
an emitter is an error naming it and where it sits in the model.

The graph: opset 17, input ``input`` (float32, ``batch x C x H x W``, the
batch dimension dynamic), output ``logits``; weights as initializers named
by the state_dict; the model's metadata (architecture, classes, the
normalisation the input needs) in ``metadata_props``.  ``fold=True`` first
folds each batch norm into the convolution before it (``minires.fold``).
Needs the ``onnx`` extra (``pip install 'minires[onnx]'``).
"""
import numpy as np

from . import backend
from .errors import ExportError, MissingExtraError
from .fileio import atomic_write_bytes
from .models import cifar, resnet
from .nn import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout,
                 Flatten, Identity, LeakyReLU, Linear, MaxPool2d, ReLU, ResBlockConv,
                 ResBlockDownSamp, ResBlockMLP, Sequential)
from .nn.checks import pair

OPSET = 17


def import_onnx():
    try:
        import onnx
    except ImportError:
        raise MissingExtraError("ONNX export needs the onnx package: pip install "
                                "'minires[onnx]' (onnx, and onnxruntime to run the file)") from None
    return onnx


class _Graph:
    """Nodes and initializers as they are emitted; names follow the module path."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.initializers, self.path = onnx, [], [], []
        self._count = 0

    def const(self, array, name):
        full = ".".join(self.path + [name])
        host = np.ascontiguousarray(backend.to_numpy(array))
        if host.dtype.kind == "f":
            host = host.astype(np.float32)  # the graph runs in float32, whatever the model's dtype
        self.initializers.append(self.onnx.numpy_helper.from_array(host, full))
        return full

    def ints(self, values, name):
        return self.const(np.asarray(values, dtype=np.int64), name)

    def node(self, op, inputs, **attrs):
        self._count += 1
        out = f"{'.'.join(self.path) or 'model'}/{op}_{self._count}"
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def emit(self, module, x, name=None):
        """The output name of ``module`` applied to the value named ``x``."""
        if name is not None:
            self.path.append(name)
        try:
            emitter = next((EMITTERS[c] for c in type(module).__mro__ if c in EMITTERS), None)
            if emitter is None:
                where = ".".join(self.path) or "the model itself"
                raise ExportError(f"ONNX export: {type(module).__name__} (at {where}) has no ONNX "
                                  f"form yet; supported: {', '.join(sorted(SUPPORTED))}")
            return emitter(self, module, x)
        finally:
            if name is not None:
                self.path.pop()

    def child(self, module, name, x):
        return self.emit(getattr(module, name), x, name)


# ---------------------------------------------------------------- layers
def _sequential(g, m, x):
    for name, child in m._modules.items():
        x = g.emit(child, x, name)
    return x


def _conv(g, m, x):
    top, bottom, left, right = m._pads
    inputs = [x, g.const(m.weight.data, "weight")]
    if m.bias is not None:
        inputs.append(g.const(m.bias.data, "bias"))
    return g.node("Conv", inputs, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=[top, left, bottom, right], dilations=list(m.dilation), group=m.groups)


def _batch_norm(g, m, x):
    if m.running_mean is None:
        raise ExportError(f"ONNX export: {type(m).__name__} (at {'.'.join(g.path)}) keeps no "
                          f"running statistics (track_running_stats=False): eval mode uses "
                          f"batch statistics, which ONNX's BatchNormalization does not")
    c = m.num_features
    dtype = backend.to_numpy(m.running_mean).dtype
    weight = m.weight.data if m.weight is not None else np.ones(c, dtype)
    bias = m.bias.data if m.bias is not None else np.zeros(c, dtype)
    return g.node("BatchNormalization", [x, g.const(weight, "weight"), g.const(bias, "bias"),
                                         g.const(m.running_mean, "running_mean"),
                                         g.const(m.running_var, "running_var")], epsilon=m.eps)


def _linear(g, m, x):  # x @ W.T (+ b): MatMul takes any leading dimensions, as Linear does
    y = g.node("MatMul", [x, g.const(backend.to_numpy(m.weight.data).T, "weight_t")])
    return g.node("Add", [y, g.const(m.bias.data, "bias")]) if m.bias is not None else y


def _flatten(g, m, x):
    if m.start_dim != 1 or m.end_dim != -1:
        raise ExportError(f"ONNX export: Flatten (at {'.'.join(g.path)}) with start_dim="
                          f"{m.start_dim}, end_dim={m.end_dim}: only Flatten(1) has an ONNX form")
    return g.node("Flatten", [x], axis=1)


def _pads(padding):
    (ph, pw) = pair(padding, "padding")
    return [ph, pw, ph, pw]


def _max_pool(g, m, x):
    if m.return_indices:
        raise ExportError(f"ONNX export: MaxPool2d (at {'.'.join(g.path)}) with return_indices")
    return g.node("MaxPool", [x], kernel_shape=list(pair(m.kernel_size, "kernel_size")),
                  strides=list(pair(m.stride, "stride")), pads=_pads(m.padding),
                  dilations=list(pair(m.dilation, "dilation")), ceil_mode=int(m.ceil_mode))


def _avg_pool(g, m, x):
    if m.divisor_override is not None:
        raise ExportError(f"ONNX export: AvgPool2d (at {'.'.join(g.path)}) with divisor_override")
    return g.node("AveragePool", [x], kernel_shape=list(pair(m.kernel_size, "kernel_size")),
                  strides=list(pair(m.stride, "stride")), pads=_pads(m.padding),
                  ceil_mode=int(m.ceil_mode), count_include_pad=int(m.count_include_pad))


def _adaptive_avg_pool(g, m, x):
    if pair(m.output_size, "output_size") != (1, 1):
        raise ExportError(f"ONNX export: AdaptiveAvgPool2d (at {'.'.join(g.path)}) with "
                          f"output_size={m.output_size}: only output_size=1 has an ONNX form yet")
    return g.node("GlobalAveragePool", [x])


def _zero_pad_shortcut(g, m, x):  # x[:, :, ::2, ::2] with m.pad zero channels each side
    sub = g.node("Slice", [x, g.ints([0, 0], "starts"), g.ints([2 ** 62, 2 ** 62], "ends"),
                           g.ints([2, 3], "axes"), g.ints([2, 2], "steps")])
    return g.node("Pad", [sub, g.ints([0, m.pad, 0, 0, 0, m.pad, 0, 0], "pads")])


# ---------------------------------------------------------------- blocks and models
def _relu_bn_conv(g, m, x, conv, bn):
    """relu(bn(conv(x))): what ``fused_bn_relu(self.bn, self.relu, self.conv(x))`` computes."""
    return g.node("Relu", [g.child(m, bn, g.child(m, conv, x))])


def _cifar_basic_block(g, m, x):
    out = _relu_bn_conv(g, m, x, "conv1", "bn1")
    out = g.child(m, "bn2", g.child(m, "conv2", out))
    return g.node("Relu", [g.node("Add", [out, g.child(m, "shortcut", x)])])


def _plain_block(g, m, x):
    return _relu_bn_conv(g, m, _relu_bn_conv(g, m, x, "conv1", "bn1"), "conv2", "bn2")


def _cifar_resnet(g, m, x):
    out = _relu_bn_conv(g, m, x, "conv1", "bn1")
    for name in ("layer1", "layer2", "layer3", "avgpool", "flatten", "linear"):
        out = g.child(m, name, out)
    return out


def _torchvision_block(g, m, x):
    """BasicBlock and Bottleneck: relu(F(x) + identity), F ending in its last bn."""
    convs = [n for n in ("conv1", "conv2", "conv3") if hasattr(m, n)]
    out = x
    for i, conv in enumerate(convs):
        bn = f"bn{i + 1}"
        out = (g.child(m, bn, g.child(m, conv, out)) if i == len(convs) - 1
               else _relu_bn_conv(g, m, out, conv, bn))
    identity = x if m.downsample is None else g.child(m, "downsample", x)
    return g.node("Relu", [g.node("Add", [out, identity])])


def _torchvision_resnet(g, m, x):
    out = g.child(m, "maxpool", _relu_bn_conv(g, m, x, "conv1", "bn1"))
    for name in ("layer1", "layer2", "layer3", "layer4", "avgpool"):
        out = g.child(m, name, out)
    return g.child(m, "fc", g.node("Flatten", [out], axis=1))  # torch.flatten(x, 1)


def _chapter_block(g, m, x):
    """The chapter's blocks: Y = relu(F(X) + S(X)), S the identity or downsampX."""
    if isinstance(m, ResBlockMLP):
        residual = g.child(m, "Z2", g.node("Relu", [g.child(m, "bn", g.child(m, "Z1", x))]))
    else:
        h = _relu_bn_conv(g, m, x, "conv1", "bn1")
        residual = g.child(m, "bn2", g.child(m, "conv2", h))
    skip = g.child(m, "downsampX", x) if isinstance(m, ResBlockDownSamp) else x
    return g.node("Relu", [g.node("Add", [residual, skip])])


EMITTERS = {
    Sequential: _sequential, Conv2d: _conv, BatchNorm1d: _batch_norm, BatchNorm2d: _batch_norm,
    Linear: _linear, Flatten: _flatten, MaxPool2d: _max_pool, AvgPool2d: _avg_pool,
    AdaptiveAvgPool2d: _adaptive_avg_pool,
    ReLU: lambda g, m, x: g.node("Relu", [x]),
    LeakyReLU: lambda g, m, x: g.node("LeakyRelu", [x], alpha=m.negative_slope),
    Identity: lambda g, m, x: x, Dropout: lambda g, m, x: x,  # (eval mode)
    cifar.ZeroPadShortcut: _zero_pad_shortcut, cifar.BasicBlock: _cifar_basic_block,
    cifar.PlainBlock: _plain_block, cifar.CifarResNet: _cifar_resnet,
    resnet.BasicBlock: _torchvision_block, resnet.Bottleneck: _torchvision_block,
    resnet.ResNet: _torchvision_resnet,
    ResBlockMLP: _chapter_block, ResBlockConv: _chapter_block, ResBlockDownSamp: _chapter_block,
}
SUPPORTED = [c.__name__ for c in EMITTERS]


def _output_shape(model, input_size):
    """The shape of one image's output (one eval-mode forward, no caches)."""
    from .grad_mode import no_grad
    like = next(iter(model.parameters()), None)
    xp = backend.get_array_module(like.data) if like is not None else np
    x = xp.zeros((1, *input_size), like.data.dtype if like is not None else np.float32)
    was_training = model.training
    try:
        with no_grad():
            return tuple(model.eval()(x).shape[1:])
    finally:
        model.train(was_training)


def to_onnx(model, input_size=(3, 32, 32), fold=False, metadata=None):
    """The ONNX ``ModelProto`` of ``model`` (in eval mode) for inputs of
    ``(batch,) + input_size``; ``metadata``: strings stored in the file."""
    onnx = import_onnx()
    if fold:
        from .fold import fold_batchnorm
        model, _ = fold_batchnorm(model)
    g = _Graph(onnx)
    out = g.emit(model, "input")  # (unsupported layers are reported before any compute)
    shape = _output_shape(model, input_size)
    if out == "input":  # an identity model: ONNX outputs need a node of their own
        out = g.node("Identity", ["input"])
    g.nodes.append(onnx.helper.make_node("Identity", [out], ["logits"], name="logits"))
    f32 = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        g.nodes, type(model).__name__,
        [onnx.helper.make_tensor_value_info("input", f32, ["batch", *input_size])],
        [onnx.helper.make_tensor_value_info("logits", f32, ["batch", *shape])],
        g.initializers)
    proto = onnx.helper.make_model(graph, producer_name="minires",
                                   opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    proto.ir_version = 8  # what opset 17 needs; read by every ONNX Runtime since 1.11
    onnx.helper.set_model_props(proto, {k: str(v) for k, v in (metadata or {}).items()})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path, input_size=(3, 32, 32), fold=False, metadata=None):
    """Write ``model`` as an ONNX file (through the atomic-write helper); returns ``path``."""
    proto = to_onnx(model, input_size, fold, metadata)
    atomic_write_bytes(path, proto.SerializeToString())
    return path
