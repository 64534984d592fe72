"""Model zoo: torchvision's ResNets and AlexNet, and the CIFAR ResNets / plain nets."""
from ..errors import UnknownModelError
from .resnet import (ResNet, BasicBlock, Bottleneck,
                     resnet18, resnet34, resnet50, resnet101, resnet152)
from .alexnet import AlexNet, alexnet
from .cifar import (resnet20, resnet32, resnet44, resnet56, resnet110, resnet1202,
                    plain20, plain32, plain44, plain56, plain110)

# The one list of model names (commands, training, benchmarks): each is a
# function of this package taking num_classes=.
TORCHVISION_MODEL_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "alexnet")
CIFAR_MODEL_NAMES = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
                     "plain20", "plain32", "plain44", "plain56", "plain110")
MODEL_NAMES = TORCHVISION_MODEL_NAMES + CIFAR_MODEL_NAMES


def check_name(name):
    """``name`` if it is a model of MODEL_NAMES, else the one error every
    command and the trainer give for an unknown name."""
    if name not in MODEL_NAMES:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    return name


def get(name, **kwargs):
    """The model ``name`` (one of MODEL_NAMES), built with ``kwargs``
    (e.g. ``num_classes=10``)."""
    return globals()[check_name(name)](**kwargs)

__all__ = ["MODEL_NAMES", "check_name", "get", "CIFAR_MODEL_NAMES", "TORCHVISION_MODEL_NAMES", "ResNet", "BasicBlock", "Bottleneck",
           "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "AlexNet", "alexnet",
           "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
           "plain20", "plain32", "plain44", "plain56", "plain110"]
