"""Scratch buffers that are reused across calls instead of freshly allocated.

Why: a fresh buffer as large as im2col's columns comes straight from the
operating system, and the page faults of its first writes cost more than the
copy itself (docs/performance.md).

Usage, always in pairs and only for arrays that do not escape the op:

    col = borrow(xp, shape, dtype)   # contents undefined, like xp.empty
    ...                              # use it, keep no view of it
    give_back(col)                   # it may be handed out again at once

A buffer that is never given back is simply freed by Python as usual.  At
most ``MAX_IDLE`` buffers wait for reuse (the oldest are dropped first), so
a change of shapes (another batch size, eval after training) cannot pile up
memory.  ``clear()`` drops them all.
"""
import threading
from collections import OrderedDict

from ...backend import get_array_module

MAX_IDLE = 16

_idle = OrderedDict()  # (array type, shape, dtype) -> list of idle buffers
_count = 0
_lock = threading.Lock()  # the data loader runs threads; keep the lists consistent


def _key(xp, shape, dtype, device=None):
    # a CuPy buffer belongs to one GPU: its device is part of the key (for
    # borrow, the current device, where xp.empty would allocate)
    if xp.__name__ == "cupy" and device is None:
        device = xp.cuda.Device().id
    return (xp.__name__, device, tuple(int(s) for s in shape), xp.dtype(dtype).str)


def borrow(xp, shape, dtype):
    """An array of ``shape``/``dtype`` with undefined contents (a reused one if
    a matching buffer is idle, else ``xp.empty``)."""
    global _count
    key = _key(xp, shape, dtype)
    with _lock:
        buffers = _idle.get(key)
        if buffers:
            _count -= 1
            buf = buffers.pop()
            if not buffers:
                del _idle[key]
            return buf
    return xp.empty(shape, dtype=dtype)


def give_back(buf):
    """Make ``buf`` (from ``borrow``) available again.  The caller must not use
    it, or any view of it, afterwards."""
    global _count
    xp = get_array_module(buf)
    device = buf.device.id if xp.__name__ == "cupy" else None
    key = _key(xp, buf.shape, buf.dtype, device)
    with _lock:
        _idle.setdefault(key, []).append(buf)
        _idle.move_to_end(key)
        _count += 1
        while _count > MAX_IDLE:  # drop the least recently returned
            oldest = next(iter(_idle))
            _idle[oldest].pop(0)
            _count -= 1
            if not _idle[oldest]:
                del _idle[oldest]


def clear():
    """Drop every idle buffer (their memory returns to the system)."""
    global _count
    with _lock:
        _idle.clear()
        _count = 0
