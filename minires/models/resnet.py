"""torchvision's ResNet family (resnet18 ... resnet152), forward and backward by hand.

Same attribute names, state_dict keys (in the same order), repr and
initialisation as ``torchvision.models.resnet``, so a torchvision checkpoint
loads with ``minires.convert.load_pretrained``.  Bottleneck is "ResNet v1.5":
the stride sits on the 3x3 convolution, as in torchvision.

Backward runs each forward in reverse.  The one new idea is the residual
fork: ``out = relu(F(x) + shortcut(x))`` sends the same upstream gradient
into both ``F`` and ``shortcut``, and since ``x`` feeds both, the two input
gradients are summed.  That sum is why gradients reach the first layers of a
152-layer network undiminished: the shortcut passes ``dy`` through untouched.
"""
from .. import nn
from ..nn import init
from ..nn.checks import check_input
from ..nn.functional.add import add
from ..nn.norm import fused_bn_relu, fused_bn_relu_backward

__all__ = ["ResNet", "BasicBlock", "Bottleneck",
           "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def conv3x3(in_planes, out_planes, stride=1):
    """3x3 convolution with padding 1, no bias (the BN after it has one)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class _ResidualBlock(nn.Module):
    """What BasicBlock and Bottleneck share: the fork, the sum and the final ReLU.

    Subclasses provide ``_residual_forward(x)`` and ``_residual_backward(d)``
    (the path F) and ``_last_bn`` (zeroed by ``zero_init_residual``).
    """

    def forward(self, x):
        out = self._residual_forward(x)
        identity = x if self.downsample is None else self.downsample(x)
        # A new array, not ``out += identity``: ``out`` is the last BN's output and
        # a layer may keep its output in the cache for backward.
        out = add(out, identity)  # out + identity, on all cores
        # The ReLU module's own call (those inside F run fused into their
        # batch norms: fused_bn_relu).
        return self.relu(out)

    def backward(self, dy):
        d_sum = self.relu.backward(dy)
        # The fork: the addition copies d_sum unchanged to both of its operands,
        # the residual path F and the shortcut ...
        d_x_shortcut = d_sum if self.downsample is None else self.downsample.backward(d_sum)
        d_x_residual = self._residual_backward(d_sum)
        # ... and both started from the same x, so x's gradient is their sum.
        return add(d_x_residual, d_x_shortcut)  # their sum, on all cores


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions (resnet18/34).  Output channels: ``planes``."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    @property
    def _last_bn(self):
        return self.bn2

    def _residual_forward(self, x):
        out = fused_bn_relu(self.bn1, self.relu, self.conv1(x))  # relu(bn1(conv1(x)))
        return self.bn2(self.conv2(out))

    def _residual_backward(self, d):
        d = self.conv2.backward(self.bn2.backward(d))
        return self.conv1.backward(fused_bn_relu_backward(self.bn1, self.relu, d))


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand (resnet50/101/152).
    Output channels: ``planes * 4``."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    @property
    def _last_bn(self):
        return self.bn3

    def _residual_forward(self, x):
        out = fused_bn_relu(self.bn1, self.relu, self.conv1(x))  # relu(bn1(conv1(x)))
        out = fused_bn_relu(self.bn2, self.relu, self.conv2(out))
        return self.bn3(self.conv3(out))

    def _residual_backward(self, d):
        # The ReLUs after bn1 and bn2 ran fused into those batch norms (their
        # caches hold the masks); the block's backward already undid the last.
        d = self.conv3.backward(self.bn3.backward(d))
        d = self.conv2.backward(fused_bn_relu_backward(self.bn2, self.relu, d))
        return self.conv1.backward(fused_bn_relu_backward(self.bn1, self.relu, d))


class ResNet(nn.Module):
    """torchvision.models.ResNet(block, layers, num_classes, zero_init_residual).

    ``width`` (minires only, keyword) is the stem's channel count, 64 in
    torchvision; the stages have width, 2*width, 4*width, 8*width planes.  A
    small width gives tiny networks for tests and experiments.
    """
    min_input_size = 32  # five halvings: a 32x32 input reaches layer4 at 1x1

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, *, width=64):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet: layers must list 4 stage depths, got {layers!r}")
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        self._init_weights(zero_init_residual)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            # The shortcut must change shape too: a strided 1x1 projection.
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual):
        """torchvision's: Kaiming normal (fan_out, relu) convolutions, BN weight 1 and
        bias 0, torch's default Linear.  ``zero_init_residual`` zeroes each block's last
        BN weight, so every block starts as the identity (Goyal et al., 2017)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight.data
                m.weight.data = init.kaiming_normal(w.shape, mode="fan_out", dtype=w.dtype)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data[...] = 1
                m.bias.data[...] = 0
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, _ResidualBlock):
                    m._last_bn.weight.data[...] = 0

    def _check_input(self, x):
        name = self._name()
        check_input(name, x, 4, channels=self.conv1.weight.shape[1], like=self.conv1.weight.data)
        h, w = x.shape[2], x.shape[3]
        if min(h, w) < self.min_input_size:
            raise ValueError(f"{name}: input must be at least {self.min_input_size}x"
                             f"{self.min_input_size} pixels (it is halved five times), "
                             f"got {h}x{w} (shape {tuple(x.shape)})")

    def forward(self, x):
        self._check_input(x)
        x = self.maxpool(fused_bn_relu(self.bn1, self.relu, self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        pooled_shape = x.shape
        # torch.flatten(x, 1) inline, as torchvision does (no Flatten module, so
        # the repr and state_dict stay torchvision's).
        x = x.reshape(x.shape[0], -1)
        x = self.fc(x)
        self._save(x, pooled_shape)
        return x

    def backward(self, dlogits):
        pooled_shape = self._restore(dlogits)
        d = self.fc.backward(dlogits).reshape(pooled_shape)
        d = self.avgpool.backward(d)
        for layer in (self.layer4, self.layer3, self.layer2, self.layer1):
            d = layer.backward(d)  # Sequential: its blocks in reverse order
        d = self.maxpool.backward(d)
        return self.conv1.backward(fused_bn_relu_backward(self.bn1, self.relu, d))


def _resnet(block, layers, num_classes, zero_init_residual, **kwargs):
    return ResNet(block, layers, num_classes=num_classes,
                  zero_init_residual=zero_init_residual, **kwargs)


def resnet18(num_classes=1000, zero_init_residual=False, **kwargs):
    """ResNet-18 (He et al., 2016): 11,689,512 parameters at 1000 classes."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, zero_init_residual, **kwargs)


def resnet34(num_classes=1000, zero_init_residual=False, **kwargs):
    """ResNet-34: 21,797,672 parameters at 1000 classes."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, zero_init_residual, **kwargs)


def resnet50(num_classes=1000, zero_init_residual=False, **kwargs):
    """ResNet-50 (v1.5): 25,557,032 parameters at 1000 classes."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, zero_init_residual, **kwargs)


def resnet101(num_classes=1000, zero_init_residual=False, **kwargs):
    """ResNet-101 (v1.5): 44,549,160 parameters at 1000 classes."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, zero_init_residual, **kwargs)


def resnet152(num_classes=1000, zero_init_residual=False, **kwargs):
    """ResNet-152 (v1.5): 60,192,808 parameters at 1000 classes."""
    return _resnet(Bottleneck, [3, 8, 36, 3], num_classes, zero_init_residual, **kwargs)
