"""The one place that knows NumPy from CuPy.

Layer code never imports numpy or cupy; it asks ``xp = get_array_module(x)``
and uses whatever library the input lives in (DeZero's design).  CuPy is
imported lazily, so minires works on machines without it.
"""
import numpy

_cupy = None
_cupy_checked = False


def cupy_or_none():
    """Return the cupy module if it is importable, else None (checked once)."""
    global _cupy, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy  # noqa: F401  (optional dependency)
            _cupy = cupy
        except Exception:  # ImportError, or a CUDA driver error on import
            _cupy = None
    return _cupy


def gpu_available():
    """True when CuPy imports and at least one CUDA device is visible."""
    cp = cupy_or_none()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def is_cupy_array(a):
    cp = cupy_or_none()
    return cp is not None and isinstance(a, cp.ndarray)


def get_array_module(*arrays):
    """numpy or cupy, whichever the arrays belong to (numpy for plain Python)."""
    for a in arrays:
        if is_cupy_array(a):
            return _cupy
    return numpy


def device_of(a):
    """'cuda' for a CuPy array, 'cpu' otherwise."""
    return "cuda" if is_cupy_array(a) else "cpu"


def normalize_device(device):
    d = str(device).lower()
    if d == "gpu" or d.startswith("cuda"):
        return "cuda"
    if d == "cpu":
        return "cpu"
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def to_device(a, device):
    """Copy array ``a`` to ``device`` ('cpu' or 'cuda'); a no-op when it is there."""
    device = normalize_device(device)
    if device == "cpu":
        return a.get() if is_cupy_array(a) else numpy.asarray(a)
    cp = cupy_or_none()
    if cp is None:
        raise RuntimeError("device 'cuda' needs CuPy: pip install 'minires[gpu]' "
                           "(the wheel matching your CUDA: docs/train.md, Install)")
    return cp.asarray(a)


def to_numpy(a):
    """A NumPy array on the host (copies from the GPU when needed)."""
    return to_device(a, "cpu")


def check_same_backend(layer, x, ref):
    """Raise a clear error when ``x`` and the layer's parameter ``ref`` live apart."""
    dx, dr = device_of(x), device_of(ref)
    if dx != dr:
        raise TypeError(f"{layer}: input is on '{dx}' but the layer's parameters are on "
                        f"'{dr}'; move one of them (module.to('{dx}') or to_device(x, '{dr}'))")
