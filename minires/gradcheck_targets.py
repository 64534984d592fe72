"""What ``gradcheck`` differentiates: a module or a (forward, backward) pair,
re-run from identical buffers and random streams for every perturbed call."""
import copy
import inspect

import numpy

from . import backend
from . import derivatives
from . import random as mr_random

FLOAT64 = numpy.float64


class ModuleTarget:
    """A float64 deep copy of a module, re-run from identical buffers and RNG."""

    def __init__(self, module, rng_state):
        self.module = copy.deepcopy(module).to(dtype=FLOAT64)
        self.label = type(module).__name__
        self.rng_state = rng_state
        # (owner module, buffer name, saved copy): restored by assignment before each
        # call, so in-place updates (running_mean *= ...) and replacements both revert.
        self.saved_buffers = [(m, k, _copy_value(b)) for m in self.module.modules()
                              for k, b in m._buffers.items()]

    def parameters(self):
        return list(self.module.named_parameters())

    def _reset(self):
        for m, k, saved in self.saved_buffers:
            setattr(m, k, _copy_value(saved))
        mr_random.set_rng_state(self.rng_state)

    def forward_only(self, inputs):
        self._reset()
        y = self.module(*inputs)
        self.module.clear_caches()  # run exactly the training code path, but keep nothing
        return y

    def to_complex(self):
        self.module.to(dtype=derivatives.COMPLEX)

    def forward_backward(self, inputs, make_upstream):
        self._reset()
        self.module.zero_grad()
        y = self.module(*inputs)
        g = make_upstream(y)
        scale = None
        if y.ndim == 0 and _callable_without_arguments(self.module.backward):
            grads = self.module.backward()
            scale = float(backend.to_numpy(g))
        else:
            grads = self.module.backward(g)
        param_grads = {}
        for name, p in self.module.named_parameters():
            param_grads[name] = None if p.grad is None else p.grad
        if scale is not None:
            grads = _scale(grads, scale)
            param_grads = {k: _scale(v, scale) for k, v in param_grads.items()}
        return y, g, grads, param_grads


class FunctionTarget:
    """A ``(forward, backward)`` pair of callables, re-run from identical RNG state."""

    def __init__(self, pair, rng_state):
        self.forward, self.backward = pair
        self.label = getattr(self.forward, "__name__", "function")
        self.rng_state = rng_state

    def parameters(self):
        return []

    def to_complex(self):
        pass

    def forward_only(self, inputs):
        mr_random.set_rng_state(self.rng_state)
        return self.forward(*inputs)

    def forward_backward(self, inputs, make_upstream):
        mr_random.set_rng_state(self.rng_state)
        y = self.forward(*inputs)
        g = make_upstream(y)
        return y, g, self.backward(g), {}


def make_target(obj, rng_state):
    """The target of a gradcheck: a module, or a (forward, backward) pair."""
    from .nn.module import Module  # late import: gradcheck needs nothing else from nn
    if isinstance(obj, Module):
        return ModuleTarget(obj, rng_state)
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(callable(f) for f in obj):
        return FunctionTarget(obj, rng_state)
    raise TypeError("gradcheck: expected a minires.nn.Module or a (forward, backward) pair of "
                    f"callables, got {type(obj).__name__}")


# --------------------------------------------------------------------------- helpers
def _copy_value(b):
    return b.copy() if hasattr(b, "copy") else copy.deepcopy(b)


def _scale(a, s):
    if a is None:
        return None
    if isinstance(a, (tuple, list)):
        return type(a)(_scale(v, s) for v in a)
    return a * s


def _callable_without_arguments(fn):
    try:
        inspect.signature(fn).bind()
        return True
    except (TypeError, ValueError):
        return False
