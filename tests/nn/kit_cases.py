"""Every minires layer and block with the hypothesis cases it is checked on:
the one list that tests/nn/test_contract.py runs minires.testing over and
benchmarks/bench_testing_kit.py times.

Each entry: name -> (minires factory, torch factory or None, input strategy).
Factories are called as ``factory(**kwargs)`` for ``(kwargs, x)`` cases and
``factory()`` for plain arrays; torch's take the same arguments.
"""
import torch
from hypothesis import strategies as st

from minires import nn
from minires.models import cifar, resnet
from minires.testing import arrays, cases, conv_configs, pool_configs, randomize_batchnorm, shapes


def images(channels, min_side=2, max_side=4, min_batch=1):
    """NCHW inputs with a fixed channel count (BatchNorm needs 2+ values per
    channel: a batch of 1 gets at least a 2x2 image)."""
    return arrays(st.tuples(st.integers(min_batch, 3), st.just(channels),
                            st.integers(min_side, max_side), st.integers(min_side, max_side)))


def trained(factory):
    """The block with random BatchNorm affine parameters (see
    randomize_batchnorm: at init a BN -> ReLU has its kink exactly where an
    evenly spaced batch puts a value, and hypothesis found that batch)."""
    return lambda: randomize_batchnorm(factory())


def rows(features, min_batch=2):
    return arrays(st.tuples(st.integers(min_batch, 4), st.just(features)))


LAYERS = {
    "Linear": (lambda: nn.Linear(3, 4), lambda: torch.nn.Linear(3, 4), rows(3, 1)),
    "Conv2d": (nn.Conv2d, torch.nn.Conv2d, cases(conv_configs())),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(3), lambda: torch.nn.BatchNorm1d(3), rows(3)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(2), lambda: torch.nn.BatchNorm2d(2), images(2)),
    "ReLU": (nn.ReLU, torch.nn.ReLU, arrays(shapes(min_dims=2))),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.2), lambda: torch.nn.LeakyReLU(0.2),
                  arrays(shapes(min_dims=2))),
    "Dropout": (lambda: nn.Dropout(0.3), None, arrays(shapes(min_dims=2))),
    "MaxPool2d": (nn.MaxPool2d, torch.nn.MaxPool2d, cases(pool_configs("max"))),
    "AvgPool2d": (nn.AvgPool2d, torch.nn.AvgPool2d, cases(pool_configs("avg"))),
    "AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d((2, 1)),
                          lambda: torch.nn.AdaptiveAvgPool2d((2, 1)), images(2, 1, 5)),
    "Flatten": (nn.Flatten, torch.nn.Flatten, arrays(shapes(min_dims=2))),
    "Identity": (nn.Identity, torch.nn.Identity, arrays(shapes())),
    "Sequential": (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
                   lambda: torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
                                               torch.nn.Linear(4, 2)), rows(3, 1)),
    "ResBlockMLP": (trained(lambda: nn.ResBlockMLP(4)), None, rows(4)),
    "ResBlockConv": (trained(lambda: nn.ResBlockConv(2)), None, images(2)),
    "ResBlockDownSamp": (trained(lambda: nn.ResBlockDownSamp(2)), None, images(2, 3, 5, 2)),
    "cifar.BasicBlock": (trained(lambda: cifar.BasicBlock(2, 4, 2)), None, images(2, 3, 5, 2)),
    "cifar.BasicBlock option B": (trained(lambda: cifar.BasicBlock(2, 4, 2, shortcut="B")), None,
                                  images(2, 3, 5, 2)),
    "cifar.PlainBlock": (trained(lambda: cifar.PlainBlock(2, 4, 2)), None, images(2, 3, 5, 2)),
    "resnet.BasicBlock": (trained(lambda: resnet.BasicBlock(3, 3)), None, images(3)),
    "resnet.Bottleneck": (trained(lambda: resnet.Bottleneck(4, 1)), None, images(4)),
}
