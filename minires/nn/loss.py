"""Placeholder: being written."""
from .module import Module


class CrossEntropyLoss(Module):
    def __init__(self, *a, **k):
        raise NotImplementedError("CrossEntropyLoss is being written")
