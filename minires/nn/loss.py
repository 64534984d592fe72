"""CrossEntropyLoss (torch.nn.CrossEntropyLoss for class-index targets).

``loss = crit(logits, y)`` returns a 0-d array on the logits' backend (read
it with ``float(loss)`` only when logging, so a GPU step does not wait);
``dlogits = crit.backward()`` starts the backward pass from the newest call.
"""
from .. import backend
from .checks import check_array
from .functional.loss import REDUCTIONS, cross_entropy_forward, cross_entropy_backward
from .module import Module

_NAME = "CrossEntropyLoss"


class CrossEntropyLoss(Module):
    """Mean (or summed) softmax cross-entropy, with torch's label smoothing.

    torch's signature; per-class ``weight``, the deprecated ``size_average``/
    ``reduce`` and ``reduction='none'`` are not supported (a clear error), and
    targets must be class indices in [0, C) or ``ignore_index`` (such rows add
    nothing and the mean does not count them, as in torch); probability
    targets are rejected.  Finding ignored rows needs ``check_targets``.

    ``check_targets`` (not in torch) checks every call that the targets lie in
    [0, C).  On the GPU that check reads one flag back to the host, a sync in
    every step, so the trainer checks the whole label set once on the host and
    turns it off.
    """

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0, *, check_targets=True):
        super().__init__()
        if weight is not None:
            raise NotImplementedError(f"{_NAME}: per-class weight is not supported")
        if size_average is not None or reduce is not None:
            raise NotImplementedError(f"{_NAME}: size_average/reduce are deprecated in torch "
                                      "and not supported; use reduction='mean' or 'sum'")
        if reduction not in REDUCTIONS:
            raise ValueError(f"{_NAME}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"{_NAME}: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self.check_targets = bool(check_targets)

    def forward(self, logits, target):
        ignore = self._check(logits, target)
        loss, cache = cross_entropy_forward(logits, target, self.label_smoothing,
                                            self.reduction, ignore)
        self._save(loss, cache)
        return loss

    def backward(self, dloss=1.0):
        """dL/dlogits for the newest forward call, scaled by the scalar ``dloss``."""
        # The stack is managed here rather than by Module._restore, because the
        # upstream gradient is an optional scalar, not an array shaped like the output.
        if not self._caches:
            raise RuntimeError(
                f"{_NAME}.backward: no cache from a matching forward call (backward called "
                "twice, before forward, or after a forward under no_grad())")
        if getattr(dloss, "size", 1) != 1:
            raise ValueError(f"{_NAME}.backward: dloss must be a scalar (the loss is 0-d), "
                             f"got shape {tuple(dloss.shape)}")
        cache = self._caches.pop()[-1]
        if hasattr(dloss, "shape"):
            dloss = dloss.reshape(())
        return cross_entropy_backward(dloss, cache)

    def _check(self, logits, target):
        xp = check_array(_NAME, logits)
        if logits.dtype.kind != "f":
            raise TypeError(f"{_NAME}: expected floating-point logits (float32 or float64), "
                            f"got dtype {logits.dtype}")
        if logits.ndim != 2:
            raise ValueError(f"{_NAME}: expected logits of shape (N, C) (2-D), got shape "
                             f"{tuple(logits.shape)}")
        n, c = logits.shape
        if n == 0 or c == 0:
            raise ValueError(f"{_NAME}: expected a non-empty batch of logits (N, C), got shape "
                             f"{tuple(logits.shape)}")
        check_array(_NAME, target)
        if backend.device_of(target) != backend.device_of(logits):
            raise TypeError(f"{_NAME}: targets are on '{backend.device_of(target)}' but logits "
                            f"on '{backend.device_of(logits)}'; move both to one device")
        if target.dtype.kind not in "iu":
            raise TypeError(f"{_NAME}: expected integer class-index targets (e.g. int64), got "
                            f"dtype {target.dtype}; probability (float) targets are not "
                            "supported")
        if target.ndim != 1 or target.shape[0] != n:
            raise ValueError(f"{_NAME}: expected targets of shape ({n},) (one class index per "
                             f"row of logits {tuple(logits.shape)}), got shape "
                             f"{tuple(target.shape)}")
        if not self.check_targets:
            return None
        ignored = target == self.ignore_index
        out_of_range = ((target < 0) | (target >= c)) & ~ignored
        if bool(out_of_range.any()):  # one host read per call (a GPU sync)
            bad = int(target[xp.argmax(out_of_range)])
            raise IndexError(f"{_NAME}: target {bad} is out of range: class indices must be "
                             f"in [0, {c}) (or ignore_index={self.ignore_index}) for logits "
                             f"with C={c} classes")
        return ignored if bool(ignored.any()) else None

    def extra_repr(self):
        return ""  # torch prints CrossEntropyLoss() whatever the arguments
