"""Pure ops: ``y, cache = op_forward(...)`` and ``grads = op_backward(dy, cache)``.

One file per family; each op's backward sits a few lines below its forward.
"""
from .reference_mode import reference

__all__ = ["reference"]  # with reference(): every op runs its plain version (reference_ops.py)
