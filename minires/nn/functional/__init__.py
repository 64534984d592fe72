"""Pure ops: ``y, cache = op_forward(...)`` and ``grads = op_backward(dy, cache)``.

One file per family; each op's backward sits a few lines below its forward.
"""
import pkgutil

from .reference_mode import reference

# with reference(): every op runs its plain version (reference_ops.py); the
# rest of the public names are the op modules themselves
__all__ = ["reference"] + [m.name for m in pkgutil.iter_modules(__path__)]
