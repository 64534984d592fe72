"""Custom CUDA kernels for the few places where they pay off on the GPU.

Each kernel has a NumPy twin: the ordinary xp code that runs on the CPU (and
on CuPy when the kernels are off).  The GPU tests check every kernel against
its twin, so the fast path can never drift from the readable one.

* ``conv.im2col`` / ``conv.col2im``: one kernel each instead of kh*kw strided
  copies (plus a padded copy, a zero fill and a transpose).  col2im is a
  per-pixel *gather*: each input pixel sums the column entries that read it,
  in the same order as the twin's loop, so there are no atomics and the result
  is deterministic (bit-identical to the twin).
* ``sgd.sgd_update``: the whole momentum-SGD update (weight decay, momentum,
  Nesterov, the step) in one kernel per parameter instead of five or six.

On a small network such as ResNet-20 a GPU step is dominated by kernel
launches, which is what these save.  Turn them off with
``MINIRES_CUDA_KERNELS=0`` or ``with minires.kernels.disabled(): ...`` (the
GPU benchmark times both).  They are never used for NumPy arrays.
"""
import contextlib
import os

_enabled = os.environ.get("MINIRES_CUDA_KERNELS", "1") != "0"


def use_for(a):
    """True when ``a`` is a CuPy array and the kernels are on."""
    from ..backend import is_cupy_array
    return _enabled and is_cupy_array(a)


def enabled():
    """True when the custom CUDA kernels are used for CuPy arrays."""
    return _enabled


def set_enabled(flag):
    global _enabled
    _enabled = bool(flag)


@contextlib.contextmanager
def disabled():
    """Run the plain xp code (the kernels' NumPy twins) on CuPy arrays too."""
    global _enabled
    old, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = old
