"""Gradient flow: per-layer gradient norms, and every residual block's input
gradient split into the part that came through the skip and the part that
came through the residual path.

    with GradientRecorder(model) as rec:
        model.backward(crit.backward())     # any backward pass
    rec.layers   # one LayerGrad per Conv2d/Linear backward call
    rec.blocks   # one BlockGrad per block backward call

A block's backward computes ``dX = dX_residual + dX_skip`` internally and
returns only the sum.  The recorder reads the two terms from outside, by
wrapping (for the duration of the ``with``) the ``backward`` of the block's
children as instance attributes, which shadow the class's method:

* ``dX_residual``: what the residual path's first layer (``conv1``/``Z1``)
  sends back;
* ``dX_skip``: what the shortcut module sends back, or for an identity
  shortcut the gradient arriving at the addition, ``dY2 = dY * 1{Y2 > 0}``
  (the output of the block's first ``relu.backward`` call: the final ReLU).

On exit every wrapper is removed, so the modules are exactly as before.
"""
from dataclasses import asdict, dataclass, field

from .. import backend

_MISSING = object()


def _norm(a):
    """Euclidean norm of a whole array, summed in float64, as a Python float."""
    xp = backend.get_array_module(a)
    return float(xp.linalg.norm(a.reshape(-1).astype(xp.float64)))


def _copy(a, keep):
    return a.copy() if keep else None


@dataclass
class LayerGrad:
    """One backward call of a Conv2d or Linear.  ``depth`` counts the weighted
    layers along the main path (1 = the first); a shortcut's layer takes its
    block's depth and ``on_shortcut=True``.  Norms are of whole batch tensors:
    ``grad_output`` = ||dL/dy||, ``grad_input`` = ||dL/dx||, ``grad_weight`` =
    ||dL/dW|| (this call's contribution), ``weight`` = ||W||."""
    name: str
    depth: int
    on_shortcut: bool
    grad_output: float
    grad_input: float
    grad_weight: float
    weight: float


@dataclass
class BlockGrad:
    """One backward call of a block.  ``grad_output`` = ||dY||, ``grad_input``
    = ||dX||.  Residual blocks also have ``grad_sum`` = ||dY2|| (at the
    addition), ``grad_skip`` = ||dX_skip|| and ``grad_residual`` =
    ||dX_residual||; plain blocks have None there.  ``split_error`` is
    max|dX - (dX_residual + dX_skip)| (0 when the split is complete).
    ``arrays`` holds copies of dY, dY2, dX, dX_skip, dX_residual with
    ``keep_arrays=True``."""
    name: str
    depth: int
    kind: str
    shortcut: str
    grad_output: float
    grad_input: float
    grad_sum: float = None
    grad_skip: float = None
    grad_residual: float = None
    split_error: float = None
    arrays: dict = field(default=None, repr=False)


def block_paths(module):
    """How ``module``'s backward forks: ``(kind, residual_entry, shortcut)``,
    kind "residual" or "plain", shortcut a module or None (identity); None
    when ``module`` is not a block the recorder knows."""
    from ..models import cifar, resnet
    from ..nn import blocks
    if isinstance(module, cifar.BasicBlock):
        return "residual", module.conv1, module.shortcut
    if isinstance(module, resnet._ResidualBlock):  # torchvision BasicBlock, Bottleneck
        return "residual", module.conv1, module.downsample
    if isinstance(module, (blocks.ResBlockMLP,)):
        return "residual", module.Z1, None
    if isinstance(module, blocks.ResBlockConv):
        return "residual", module.conv1, None
    if isinstance(module, blocks.ResBlockDownSamp):
        return "residual", module.conv1, module.downsampX
    if isinstance(module, cifar.PlainBlock):
        return "plain", module.conv1, None
    return None


def _shortcut_label(shortcut):
    if shortcut is None or (not shortcut._modules and type(shortcut).__name__ == "Sequential"):
        return "identity"
    if not shortcut._modules:
        return type(shortcut).__name__
    return "+".join(type(m).__name__ for m in shortcut.modules() if not m._modules)


class GradientRecorder:
    """Context manager recording gradient norms of every backward pass run
    inside it; see the module docstring.  ``keep_arrays=True`` also keeps
    copies of each block's dY, dY2, dX, dX_skip and dX_residual."""

    def __init__(self, model, keep_arrays=False):
        self.model, self.keep_arrays = model, keep_arrays
        self.layers, self.blocks = [], []
        self._wrapped = {}   # id(module) -> [module, saved attribute, befores, afters, failures]
        self._depth = {}     # id(weighted layer) -> its depth
        self._frames = []    # blocks whose backward is running, innermost last

    # ---- wrapping
    def _hook(self, module, before=None, after=None, failed=None):
        """Call ``before(dy)`` and ``after(dy, dx)`` around ``module.backward``
        (``failed()`` instead of ``after`` if it raises)."""
        entry = self._wrapped.get(id(module))
        if entry is None:
            saved = module.__dict__.get("backward", _MISSING)
            entry = self._wrapped[id(module)] = [module, saved, [], [], []]
            own = module.backward  # the method (or an outer recorder's wrapper)
            befores, afters, failures = entry[2], entry[3], entry[4]

            def backward(dy):
                for f in befores:
                    f(dy)
                try:
                    dx = own(dy)
                except BaseException:
                    for f in failures:
                        f()
                    raise
                for f in afters:
                    f(dy, dx)
                return dx

            object.__setattr__(module, "backward", backward)
        for callbacks, f in zip(entry[2:], (before, after, failed)):
            if f is not None:
                callbacks.append(f)

    def __enter__(self):
        from ..nn.conv import Conv2d
        from ..nn.linear import Linear
        try:
            # Registration order is forward order in every minires model, and a
            # block's entry layer is registered before its shortcut.
            entry_of_shortcut, depth = {}, 0
            for name, m in self.model.named_modules():
                paths = block_paths(m)
                if paths is not None:
                    self._watch_block(name, m, *paths)
                    for s in (paths[2].modules() if paths[2] is not None else ()):
                        entry_of_shortcut[id(s)] = paths[1]
                if isinstance(m, (Conv2d, Linear)):
                    entry = entry_of_shortcut.get(id(m))
                    if entry is None:
                        depth += 1
                        self._depth[id(m)] = depth
                    else:
                        self._depth[id(m)] = self._depth.get(id(entry), depth + 1)
                    self._watch_layer(name, m, self._depth[id(m)], entry is not None)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc):
        self._restore()
        return False

    def _restore(self):
        for module, saved, *_ in self._wrapped.values():
            if saved is _MISSING:
                module.__dict__.pop("backward", None)
            else:
                object.__setattr__(module, "backward", saved)
        self._wrapped.clear()
        self._frames.clear()

    # ---- what is recorded
    def _watch_layer(self, name, layer, depth, on_shortcut):
        before_grad = []

        def before(dy):
            g = layer.weight.grad
            before_grad.append(None if g is None else g.copy())

        def after(dy, dx):
            old = before_grad.pop()
            g = layer.weight.grad
            dw = 0.0 if g is None else _norm(g if old is None else g - old)
            self.layers.append(LayerGrad(name, depth, on_shortcut, _norm(dy), _norm(dx), dw,
                                         _norm(layer.weight.data)))

        self._hook(layer, before, after, failed=before_grad.pop)

    def _watch_block(self, name, block, kind, entry, shortcut):
        def current():
            return self._frames[-1] if self._frames and self._frames[-1]["block"] is block else None

        def before(dy):
            self._frames.append({"block": block, "sum": None, "res": None, "skip": None})

        def after(dy, dx):
            frame = self._frames.pop()
            rec = BlockGrad(name, self._depth.get(id(entry), 0), kind,
                            _shortcut_label(shortcut) if kind == "residual" else "none",
                            _norm(dy), _norm(dx))
            keep = self.keep_arrays
            arrays = {"dY": _copy(dy, keep), "dX": _copy(dx, keep)}
            if kind == "residual":
                skip = frame["sum"] if shortcut is None else frame["skip"]
                res = frame["res"]
                rec.grad_sum, rec.grad_skip = _norm(frame["sum"]), _norm(skip)
                rec.grad_residual = _norm(res)
                xp = backend.get_array_module(dx)
                rec.split_error = float(xp.max(xp.abs(dx - (res + skip))))
                arrays.update(dY2=_copy(frame["sum"], keep), dX_skip=_copy(skip, keep),
                              dX_residual=_copy(res, keep))
            rec.arrays = arrays if keep else None
            self.blocks.append(rec)

        def first_relu(dy, dx):  # the block's final ReLU runs backward first
            f = current()
            if f is not None and f["sum"] is None:
                f["sum"] = dx

        def residual_entry(dy, dx):
            f = current()
            if f is not None and f["res"] is None:
                f["res"] = dx

        def shortcut_out(dy, dx):
            f = current()
            if f is not None:
                f["skip"] = dx

        self._hook(block, before, after, failed=self._frames.pop)
        if kind == "residual":
            self._hook(block.relu, after=first_relu)
            self._hook(entry, after=residual_entry)
            if shortcut is not None:
                self._hook(shortcut, after=shortcut_out)

    def clear(self):
        self.layers.clear()
        self.blocks.clear()

    def as_dict(self):
        def strip(d):
            d = asdict(d)
            d.pop("arrays", None)
            return d
        return {"layers": [strip(r) for r in self.layers],
                "blocks": [strip(r) for r in self.blocks]}
