"""Batch norm folded into the convolution before it, for inference.

In eval mode a batch norm is a fixed affine map per channel,
``bn(z) = gamma * (z - mean) / sqrt(var + eps) + beta``, and a convolution
is linear, so ``bn(conv(x))`` is one convolution with weight
``W * s`` (each output channel scaled by ``s = gamma / sqrt(var + eps)``)
and bias ``beta - mean * s`` (plus ``b * s`` when the convolution had a bias
``b``).  The folded model skips a whole pass over every activation that
follows a convolution, and gives the same logits up to float32 rounding.

Which batch norm follows which convolution is read from the code, not
guessed: inside a ``Sequential`` a ``BatchNorm2d`` right after a ``Conv2d``,
and in the blocks and models of ``minires.models`` and ``minires.nn`` the
pairs their ``forward`` applies one after the other (``CONV_BN_PAIRS``).
"""
import copy

import numpy as np

from . import backend
from .models import cifar, resnet
from .nn import BatchNorm2d, Conv2d, Identity, Parameter, Sequential
from .nn.blocks import ResBlockConv, ResBlockDownSamp

# class -> (conv attribute, batch-norm attribute) pairs its forward runs as bn(conv(.))
CONV_BN_PAIRS = {
    cifar.BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    cifar.PlainBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    cifar.CifarResNet: (("conv1", "bn1"),),
    resnet.BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    resnet.Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    resnet.ResNet: (("conv1", "bn1"),),
    ResBlockConv: (("conv1", "bn1"), ("conv2", "bn2")),
    ResBlockDownSamp: (("conv1", "bn1"), ("conv2", "bn2")),
}


def fold_conv_bn(conv, bn):
    """Fold the eval-mode ``bn`` into ``conv`` in place (weight and bias, in
    float64, then back to the weight's dtype)."""
    w = conv.weight.data
    xp = backend.get_array_module(w)
    mean, var = (backend.to_numpy(a).astype(np.float64) for a in (bn.running_mean, bn.running_var))
    gamma = (backend.to_numpy(bn.weight.data).astype(np.float64) if bn.weight is not None
             else np.ones_like(mean))
    beta = (backend.to_numpy(bn.bias.data).astype(np.float64) if bn.bias is not None
            else np.zeros_like(mean))
    scale = gamma / np.sqrt(var + bn.eps)
    bias = (backend.to_numpy(conv.bias.data).astype(np.float64) if conv.bias is not None
            else np.zeros_like(mean))
    folded_w = backend.to_numpy(w).astype(np.float64) * scale[:, None, None, None]
    conv.weight.data = xp.asarray(folded_w.astype(w.dtype))
    conv.bias = Parameter(xp.asarray(((bias - mean) * scale + beta).astype(w.dtype)))


def _foldable(conv, bn):
    return (isinstance(conv, Conv2d) and isinstance(bn, BatchNorm2d)
            and bn.running_mean is not None and conv.out_channels == bn.num_features)


def fold_batchnorm(model):
    """A copy of ``model`` in eval mode with every batch norm that follows a
    convolution folded into it (and replaced by ``Identity``).  ``model``
    itself is not changed.  Returns ``(folded, n_folded)``."""
    folded = copy.deepcopy(model).eval()
    count = 0
    for module in list(folded.modules()):
        pairs = next((list(CONV_BN_PAIRS[c]) for c in type(module).__mro__
                      if c in CONV_BN_PAIRS), [])  # (CifarPlainNet is a CifarResNet)
        if type(module) is Sequential:
            names = list(module._modules)
            pairs += list(zip(names, names[1:]))
        for conv_name, bn_name in pairs:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if _foldable(conv, bn):
                fold_conv_bn(conv, bn)
                setattr(module, bn_name, Identity())
                count += 1
    return folded, count
