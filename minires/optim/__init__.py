"""Optimisers and learning-rate schedules (torch.optim names and semantics)."""
from .sgd import SGD, split_decay_groups
from .ema import ModelEMA, recalibrate_batchnorm
from .schedules import (LRScheduler, MultiStepLR, CosineAnnealingLR, LinearLR, SequentialLR,
                        OneCycleLR)

__all__ = ["SGD", "split_decay_groups", "LRScheduler", "MultiStepLR", "CosineAnnealingLR",
           "LinearLR", "SequentialLR", "OneCycleLR", "ModelEMA", "recalibrate_batchnorm"]
