"""The switch between the fast ops and the plain ones (``reference_ops.py``).

    with minires.nn.functional.reference():
        y = model(x)                # every op runs its few plain lines
        dx = model.backward(dy)

Each fast op checks ``on()`` first and hands over to its reference twin; a
backward hands over when its cache came from a reference forward.  The
switch is a context variable: it holds for the calling thread only.
"""
import contextlib
import contextvars

_reference = contextvars.ContextVar("minires_reference_mode", default=False)


@contextlib.contextmanager
def reference():
    """Inside this block every functional op (conv, batch norm, ReLU, the
    pools, linear, cross-entropy, the residual sum) runs its plain reference
    implementation: no threads, no scratch buffers, no fused passes.  The
    numbers agree with the fast ops to rounding (float64: 1e-10)."""
    token = _reference.set(True)
    try:
        yield
    finally:
        _reference.reset(token)


def on():
    """True inside ``reference()``."""
    return _reference.get()
