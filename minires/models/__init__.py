"""Model zoo: torchvision's ResNets and AlexNet, and the CIFAR ResNets / plain nets."""
from .resnet import (ResNet, BasicBlock, Bottleneck,
                     resnet18, resnet34, resnet50, resnet101, resnet152)
from .alexnet import AlexNet, alexnet
from .cifar import (resnet20, resnet32, resnet44, resnet56, resnet110, resnet1202,
                    plain20, plain32, plain44, plain56, plain110)

__all__ = ["ResNet", "BasicBlock", "Bottleneck",
           "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "AlexNet", "alexnet",
           "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
           "plain20", "plain32", "plain44", "plain56", "plain110"]
