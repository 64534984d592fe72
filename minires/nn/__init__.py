"""Layers with hand-written forward and backward passes (torch.nn names)."""
from .module import Module, Parameter, Sequential
from .linear import Linear
from .conv import Conv2d
from .norm import BatchNorm1d, BatchNorm2d
from .activation import ReLU, LeakyReLU, Dropout
from .pooling import MaxPool2d, AvgPool2d, AdaptiveAvgPool2d
from .shape import Flatten, Identity
from .loss import CrossEntropyLoss
from .blocks import ResBlockMLP, ResBlockConv, ResBlockDownSamp
from . import functional, init

__all__ = ["Module", "Parameter", "Sequential", "Linear", "Conv2d", "BatchNorm1d",
           "BatchNorm2d", "ReLU", "LeakyReLU", "Dropout", "MaxPool2d", "AvgPool2d",
           "AdaptiveAvgPool2d", "Flatten", "Identity", "CrossEntropyLoss",
           "ResBlockMLP", "ResBlockConv", "ResBlockDownSamp",
           "functional", "init"]
