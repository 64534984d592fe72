"""Module, Parameter and Sequential: the contract every layer follows.

* ``y = m(x)`` runs ``forward`` and, unless under ``no_grad``, keeps one cache
  per call on a stack (a module may be called several times in one forward).
* ``dx = m.backward(dy)`` pops the newest cache, returns dL/dx and *adds*
  parameter gradients into ``p.grad`` (torch's accumulation).
* ``state_dict`` uses torch's key names and order: a module's own parameters,
  then its own buffers, then each child's, recursively.
"""
import warnings
from collections import OrderedDict

from .. import backend
from ..backend import device_of
from ..grad_mode import is_grad_enabled

MAX_CACHES = 8  # forward calls of one module that may wait for their backward


class Parameter:
    """A trainable array ``data`` with its gradient ``grad`` (None until set)."""

    def __init__(self, data):
        self.data = data
        self.grad = None

    def accumulate(self, g):
        """grad += g (allocating on first use), as torch accumulates."""
        if self.grad is None:
            self.grad = g.copy() if g is not None else None
        else:
            self.grad += g

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"



def zero_grads(params, set_to_none=True):
    """The one zero_grad (Module.zero_grad and the optimisers call it): drop
    each gradient (torch's default), or fill it with zeros in place."""
    for p in params:
        if set_to_none or p.grad is None:
            p.grad = None
        else:
            p.grad[...] = 0

class Module:
    """Base of every layer and block: ``y = m(x)`` keeps a cache per call,
    ``dx = m.backward(dy)`` consumes the newest and adds into each ``p.grad``;
    parameters, buffers, children, ``state_dict`` and ``to`` as in torch
    (see the module docstring for the contract)."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_caches", [])
        object.__setattr__(self, "training", True)

    # ---- registration (like torch: assigning a Parameter or Module registers it)
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() first")
        if isinstance(value, Parameter):
            self._modules.pop(name, None)
            self._buffers.pop(name, None)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._parameters.pop(name, None)
            self._buffers.pop(name, None)
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        elif name in self._parameters:
            if value is not None:
                raise TypeError(f"{self._name()}: cannot assign {type(value).__name__} to "
                                f"parameter '{name}' (wrap it in Parameter, or set .data)")
            del self._parameters[name]
        elif name in self._modules and value is None:
            del self._modules[name]
        object.__setattr__(self, name, value)

    def register_buffer(self, name, value):
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    def add_module(self, name, module):
        setattr(self, name, module)

    # ---- forward / backward
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def _name(self):
        return type(self).__name__

    def _save(self, y, cache):
        """Keep ``cache`` (and the output's shape, to check dy) for one backward.

        At most ``MAX_CACHES`` calls wait for their backward: a loop of forward
        calls outside ``no_grad()`` that never calls backward (evaluation
        written without no_grad) would otherwise keep every call's
        activations.  The oldest is dropped, with a warning once per module."""
        if is_grad_enabled():
            if len(self._caches) >= MAX_CACHES:
                self._caches.pop(0)
                if not getattr(self, "_warned_caches", False):
                    object.__setattr__(self, "_warned_caches", True)
                    warnings.warn(
                        f"{self._name()}: {MAX_CACHES} forward calls are waiting for their "
                        f"backward; dropping the oldest (run inference under minires.no_grad(), "
                        f"which keeps no cache)", RuntimeWarning, stacklevel=3)
            self._caches.append((tuple(y.shape), y.dtype, device_of(y), cache))

    def _restore(self, dy):
        """Pop the newest cache; check that ``dy`` matches that call's output."""
        if not self._caches:
            raise RuntimeError(
                f"{self._name()}.backward: no cache from a matching forward call "
                "(backward called twice, before forward, or after a forward under no_grad())")
        shape, dtype, device, _ = self._caches[-1]  # checked first: a bad dy keeps the cache
        if not hasattr(dy, "shape") or tuple(dy.shape) != shape:
            raise ValueError(f"{self._name()}.backward: expected dy of shape {shape} "
                             f"(the forward output), got {getattr(dy, 'shape', type(dy))}")
        if getattr(dy, "dtype", None) != dtype:
            raise TypeError(f"{self._name()}.backward: expected dy of dtype {dtype} (the forward "
                            f"output's), got {dy.dtype}; it would turn the gradients {dy.dtype}")
        if device_of(dy) != device:
            raise TypeError(f"{self._name()}.backward: expected dy on '{device}' (where the "
                            f"forward output is), got an array on '{device_of(dy)}'")
        return self._caches.pop()[-1]

    def clear_caches(self):
        """Drop every cache held by this module and its children."""
        for m in self.modules():
            m._caches.clear()

    # ---- traversal
    def children(self):
        return iter(self._modules.values())

    def named_children(self):
        return iter(self._modules.items())

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(prefix + ("." if prefix else "") + name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix=""):
        seen = set()
        for mname, m in self.named_modules(prefix):
            for pname, p in m._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (mname + "." if mname else "") + pname, p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for mname, m in self.named_modules(prefix):
            for bname, b in m._buffers.items():
                yield (mname + "." if mname else "") + bname, b

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    # ---- modes and gradients
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        zero_grads(self.parameters(), set_to_none)

    # ---- state
    def state_dict(self):
        """Ordered dict of arrays with torch's keys and order (references, not copies)."""
        sd = OrderedDict()
        for mname, m in self.named_modules():
            pre = mname + "." if mname else ""
            for k, p in m._parameters.items():
                sd[pre + k] = p.data
            for k, b in m._buffers.items():
                sd[pre + k] = b
        return sd

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into this module's parameters and buffers, converting to the
        module's dtype and backend.  Every missing, unexpected or mis-shaped key
        is named in one error."""
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mis = []
        for k, v in state_dict.items():
            if k in own and tuple(getattr(v, "shape", ())) != tuple(own[k].shape):
                mis.append(f"{k}: expected shape {tuple(own[k].shape)}, got {tuple(getattr(v, 'shape', ()))}")
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if mis:
            problems.append("mis-shaped keys: " + "; ".join(mis))
        if problems:
            raise KeyError(f"{self._name()}.load_state_dict: " + " | ".join(problems))
        for mname, m in self.named_modules():
            pre = mname + "." if mname else ""
            for k, p in m._parameters.items():
                if pre + k in state_dict:
                    p.data = _convert_like(state_dict[pre + k], p.data)
            for k, b in list(m._buffers.items()):
                if pre + k in state_dict:
                    m._buffers[k] = _convert_like(state_dict[pre + k], b)
                    object.__setattr__(m, k, m._buffers[k])
        return {"missing_keys": missing, "unexpected_keys": unexpected}

    def to(self, device=None, dtype=None):
        """Move parameters, gradients and buffers to ``device`` ('cpu'/'cuda')
        and/or cast floating ones to ``dtype``.  ``m.to(np.float64)`` works too."""
        if device is not None and not isinstance(device, str):
            device, dtype = None, device  # m.to(np.float64)
        for m in self.modules():
            for p in m._parameters.values():
                p.data = _move(p.data, device, dtype)
                if p.grad is not None:
                    p.grad = _move(p.grad, device, dtype)
            for k, b in list(m._buffers.items()):
                if b is None:
                    continue
                is_float = b.dtype.kind == "f"
                nb = _move(b, device, dtype if is_float else None)
                m._buffers[k] = nb
                object.__setattr__(m, k, nb)
            m._caches.clear()
        return self

    def double(self):
        return self.to(dtype="float64")

    def float(self):
        return self.to(dtype="float32")

    # ---- printing (reads like print(torch_module))
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = []
        extra = self.extra_repr()
        if not self._modules:
            return f"{self._name()}({extra})"
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        head = f"{self._name()}({extra}" if extra else f"{self._name()}("
        return head + "\n" + "\n".join(lines) + "\n)"


def _move(a, device, dtype):
    if device is not None:
        a = backend.to_device(a, device)
    if dtype is not None and a.dtype != dtype:
        a = a.astype(dtype)
    return a


def _convert_like(value, like):
    """``value`` (NumPy, CuPy or anything array-like) as an array with ``like``'s
    dtype and backend, always a fresh copy."""
    xp = backend.get_array_module(like)
    if xp.__name__ == "numpy":
        value = backend.to_numpy(value) if backend.is_cupy_array(value) else value
    return xp.array(value, dtype=like.dtype, copy=True)


class Sequential(Module):
    """Children run in order; backward runs them in reverse."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, dy):
        for m in reversed(list(self._modules.values())):
            dy = m.backward(dy)
        return dy

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            # torch keeps the children's names: model[1:] prints (1): ..., (2): ...
            return Sequential(OrderedDict(list(self._modules.items())[i]))
        return mods[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, m):
        self.add_module(str(len(self._modules)), m)
        return self
