"""The CIFAR-10 ResNets and plain nets of He et al. 2015 (arXiv:1512.03385, sec. 4.2).

Architecture (depth = 6n + 2):

    conv1   3x3, 3 -> 16, pad 1, no bias      32x32
    bn1, relu
    layer1  n basic blocks, 16 channels         32x32
    layer2  n basic blocks, 32 channels         16x16 (first block has stride 2)
    layer3  n basic blocks, 64 channels          8x8  (first block has stride 2)
    avgpool global average -> flatten -> linear 64 -> num_classes

Names follow the widely used PyTorch port akamaster/pytorch_resnet_cifar10, so
its checkpoints load with ``load_state_dict`` (strip the ``module.`` prefix that
DataParallel adds):  ``conv1, bn1, layer1..layer3, linear``; each ``BasicBlock``
has ``conv1, bn1, conv2, bn2, shortcut``.  The head is ``linear`` (not
torchvision's ``fc``); ``model.fc`` is a read/write alias for it.  ``relu``,
``avgpool`` and ``flatten`` hold no state, so they add no state_dict keys.

Shortcuts where a block changes shape (``shortcut=``):

* ``"A"`` (the paper's choice on CIFAR, no parameters): subsample by 2 in space
  and zero-pad the channels, ``planes // 4`` zero channels before and after.
* ``"B"``: a 1x1 projection conv (stride 2) + BatchNorm.

Identity shortcuts elsewhere are an empty ``Sequential`` (as in the port).
The plain nets (``plain20`` ...) are the same layers with no shortcut at all.

Initialisation as torchvision: convolutions kaiming_normal (fan_out, relu),
BatchNorm weight 1 and bias 0, Linear torch's default.
"""
from ..backend import get_array_module
from ..nn import init
from ..nn.activation import ReLU
from ..nn.checks import check_input
from ..nn.conv import Conv2d
from ..nn.functional.add import add
from ..nn.linear import Linear
from ..nn.module import Module, Sequential
from ..nn.norm import BatchNorm2d, fused_bn_relu, fused_bn_relu_backward
from ..nn.pooling import AdaptiveAvgPool2d
from ..nn.shape import Flatten

__all__ = ["ZeroPadShortcut", "BasicBlock", "PlainBlock", "CifarResNet", "CifarPlainNet",
           "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
           "plain20", "plain32", "plain44", "plain56", "plain110", "CIFAR_MODELS"]


# ---------------------------------------------------------------- option-A shortcut
def zero_pad_shortcut_forward(x, pad):
    """y = x[:, :, ::2, ::2] with ``pad`` zero channels added before and after:
    (N, C, H, W) -> (N, C + 2*pad, ceil(H/2), ceil(W/2))."""
    xp = get_array_module(x)
    sub = x[:, :, ::2, ::2]
    n, c, h, w = sub.shape
    y = xp.zeros((n, c + 2 * pad, h, w), dtype=x.dtype)
    y[:, pad:pad + c] = sub
    return y, (tuple(x.shape), pad)


def zero_pad_shortcut_backward(dy, cache):
    """The zero channels receive no input, so their gradient is dropped; the
    middle channels are scattered back to the strided positions they were read
    from.  Every other input pixel was never read: its gradient is zero."""
    x_shape, pad = cache
    xp = get_array_module(dy)
    dx = xp.zeros(x_shape, dtype=dy.dtype)
    dx[:, :, ::2, ::2] = dy[:, pad:pad + x_shape[1]]
    return dx


class ZeroPadShortcut(Module):
    """The paper's parameter-free option-A shortcut (the port's LambdaLayer)."""

    def __init__(self, in_planes, planes):
        super().__init__()
        if planes != 2 * in_planes or planes % 4:
            raise ValueError(f"ZeroPadShortcut: option A doubles the channels, expected "
                             f"planes = 2 * in_planes (a multiple of 4), got "
                             f"in_planes={in_planes}, planes={planes}")
        self.in_planes, self.planes, self.pad = in_planes, planes, planes // 4

    def forward(self, x):
        check_input("ZeroPadShortcut", x, 4, channels=self.in_planes)
        y, cache = zero_pad_shortcut_forward(x, self.pad)
        self._save(y, cache)
        return y

    def backward(self, dy):
        return zero_pad_shortcut_backward(dy, self._restore(dy))

    def extra_repr(self):
        return f"stride=2, pad_channels=({self.pad}, {self.pad})"


# ---------------------------------------------------------------- blocks
class BasicBlock(Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1, shortcut="A"):
        super().__init__()
        self.conv1 = Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        # One ReLU module for both ReLUs (torchvision does the same).  The first,
        # after bn1, runs fused into bn1's pass (fused_bn_relu: the same numbers,
        # one pass over memory fewer each way).
        self.relu = ReLU()
        if stride == 1 and in_planes == planes:
            self.shortcut = Sequential()  # identity: forward x, backward dy
        elif shortcut == "A":
            if stride != 2:
                raise ValueError(f"BasicBlock: option-A shortcut subsamples by 2, got stride={stride}")
            self.shortcut = ZeroPadShortcut(in_planes, planes)
        elif shortcut == "B":
            self.shortcut = Sequential(
                Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                BatchNorm2d(planes))
        else:
            raise ValueError(f"BasicBlock: shortcut must be 'A' or 'B', got {shortcut!r}")

    def forward(self, x):
        out = fused_bn_relu(self.bn1, self.relu, self.conv1(x))  # relu(bn1(conv1(x)))
        out = self.bn2(self.conv2(out))
        out = add(out, self.shortcut(x))  # out + shortcut(x), on all cores
        return self.relu(out)

    def backward(self, dy):
        d_sum = self.relu.backward(dy)  # the final ReLU
        # out = residual + shortcut(x): an addition passes its gradient unchanged
        # to both terms, so d_sum goes down the residual path AND the shortcut.
        d_res = self.bn2.backward(d_sum)
        d_res = self.conv2.backward(d_res)
        d_res = fused_bn_relu_backward(self.bn1, self.relu, d_res)  # relu, then bn1
        d_res = self.conv1.backward(d_res)
        d_short = self.shortcut.backward(d_sum)
        # x fed both paths, so its gradient is the sum of the two.  Through an
        # identity shortcut d_sum reaches x untouched: the "gradient highway"
        # that lets very deep ResNets train where plain nets do not.
        return add(d_res, d_short)  # d_res + d_short, on all cores


class PlainBlock(Module):
    """BasicBlock without its shortcut: relu(bn2(conv2(relu(bn1(conv1(x))))))."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1, shortcut=None):
        super().__init__()
        self.conv1 = Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.relu = ReLU()

    def forward(self, x):
        out = fused_bn_relu(self.bn1, self.relu, self.conv1(x))  # relu(bn1(conv1(x)))
        return fused_bn_relu(self.bn2, self.relu, self.conv2(out))

    def backward(self, dy):
        # A single path: the gradient has no way around the layers.
        d = fused_bn_relu_backward(self.bn2, self.relu, dy)
        d = self.conv2.backward(d)
        d = fused_bn_relu_backward(self.bn1, self.relu, d)
        return self.conv1.backward(d)


# ---------------------------------------------------------------- the network
class CifarResNet(Module):
    def __init__(self, block, num_blocks, num_classes=10, shortcut="A"):
        super().__init__()
        self.in_planes = 16
        self.conv1 = Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = BatchNorm2d(16)
        self.relu = ReLU()
        self.layer1 = self._make_layer(block, 16, num_blocks[0], 1, shortcut)
        self.layer2 = self._make_layer(block, 32, num_blocks[1], 2, shortcut)
        self.layer3 = self._make_layer(block, 64, num_blocks[2], 2, shortcut)
        self.avgpool = AdaptiveAvgPool2d(1)
        self.flatten = Flatten(1)
        self.linear = Linear(64 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, Conv2d):
                m.weight.data = init.kaiming_normal(m.weight.shape, mode="fan_out",
                                                    dtype=m.weight.dtype)
            elif isinstance(m, BatchNorm2d):
                m.weight.data[...] = 1
                m.bias.data[...] = 0

    def _make_layer(self, block, planes, n, stride, shortcut):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s, shortcut))
            self.in_planes = planes * block.expansion
        return Sequential(*layers)

    @property
    def fc(self):
        """torchvision's name for the head (an alias of ``linear``)."""
        return self.linear

    @fc.setter
    def fc(self, module):
        self._modules.pop("fc", None)  # Module.__setattr__ registered it; keep 'linear'
        self.linear = module

    def forward(self, x):
        out = fused_bn_relu(self.bn1, self.relu, self.conv1(x))  # relu(bn1(conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.flatten(self.avgpool(out))
        return self.linear(out)

    def backward(self, dy):
        """The forward in reverse; returns dL/dx and fills every parameter's grad."""
        d = self.linear.backward(dy)
        d = self.flatten.backward(d)
        d = self.avgpool.backward(d)
        d = self.layer3.backward(d)
        d = self.layer2.backward(d)
        d = self.layer1.backward(d)
        d = fused_bn_relu_backward(self.bn1, self.relu, d)
        return self.conv1.backward(d)


class CifarPlainNet(CifarResNet):
    """The plain counterpart: the same layers built from PlainBlock."""


def _blocks_per_stage(depth):
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 20, 32, ...), got {depth}")
    return (depth - 2) // 6


def _cifar_resnet(depth, num_classes=10, shortcut="A"):
    if shortcut not in ("A", "B"):
        raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
    n = _blocks_per_stage(depth)
    return CifarResNet(BasicBlock, [n, n, n], num_classes=num_classes, shortcut=shortcut)


def _cifar_plain(depth, num_classes=10):
    n = _blocks_per_stage(depth)
    return CifarPlainNet(PlainBlock, [n, n, n], num_classes=num_classes, shortcut=None)


def resnet20(num_classes=10, shortcut="A"):
    """ResNet-20: 269,722 parameters with option A (272,474 with B)."""
    return _cifar_resnet(20, num_classes, shortcut)


def resnet32(num_classes=10, shortcut="A"):
    """ResNet-32: 464,154 parameters with option A (466,906 with B)."""
    return _cifar_resnet(32, num_classes, shortcut)


def resnet44(num_classes=10, shortcut="A"):
    """ResNet-44: 658,586 parameters with option A (661,338 with B)."""
    return _cifar_resnet(44, num_classes, shortcut)


def resnet56(num_classes=10, shortcut="A"):
    """ResNet-56: 853,018 parameters with option A (855,770 with B)."""
    return _cifar_resnet(56, num_classes, shortcut)


def resnet110(num_classes=10, shortcut="A"):
    """ResNet-110: 1,727,962 parameters with option A (1,730,714 with B)."""
    return _cifar_resnet(110, num_classes, shortcut)


def resnet1202(num_classes=10, shortcut="A"):
    """ResNet-1202: 19,421,274 parameters with option A (19,424,026 with B)."""
    return _cifar_resnet(1202, num_classes, shortcut)


def plain20(num_classes=10):
    """Plain-20: ResNet-20's layers with no shortcut at all (He et al.'s plain baseline)."""
    return _cifar_plain(20, num_classes)


def plain32(num_classes=10):
    """Plain-32: ResNet-32's layers with no shortcut at all (He et al.'s plain baseline)."""
    return _cifar_plain(32, num_classes)


def plain44(num_classes=10):
    """Plain-44: ResNet-44's layers with no shortcut at all (He et al.'s plain baseline)."""
    return _cifar_plain(44, num_classes)


def plain56(num_classes=10):
    """Plain-56: ResNet-56's layers with no shortcut at all (He et al.'s plain baseline)."""
    return _cifar_plain(56, num_classes)


def plain110(num_classes=10):
    """Plain-110: ResNet-110's layers with no shortcut at all (He et al.'s plain baseline)."""
    return _cifar_plain(110, num_classes)


CIFAR_MODELS = {
    "resnet20": resnet20, "resnet32": resnet32, "resnet44": resnet44,
    "resnet56": resnet56, "resnet110": resnet110, "resnet1202": resnet1202,
    "plain20": plain20, "plain32": plain32, "plain44": plain44,
    "plain56": plain56, "plain110": plain110,
}
