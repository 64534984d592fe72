"""Input validation shared by the layers: every error names the layer, what it
expected and what it received, instead of a bare NumPy broadcasting error."""
from .. import backend


def check_array(layer, x):
    xp = backend.get_array_module(x)
    if not isinstance(x, xp.ndarray):
        raise TypeError(f"{layer}: expected an array (numpy.ndarray or cupy.ndarray), "
                        f"got {type(x).__name__}")
    return xp


def check_float(layer, x):
    xp = check_array(layer, x)
    if x.dtype.kind != "f":
        raise TypeError(f"{layer}: expected a floating-point input (float32 or float64), "
                        f"got dtype {x.dtype}")
    return xp


def check_input(layer, x, ndims, channels=None, like=None):
    """Check a float input of rank in ``ndims`` with ``channels`` on axis 1; when
    ``like`` (a parameter array) is given, dtype and backend must match it."""
    xp = check_float(layer, x)
    ndims = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if x.ndim not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{layer}: expected a {want} input, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer}: expected {channels} channels/features on axis 1, "
                         f"got shape {tuple(x.shape)}")
    if like is not None:
        backend.check_same_backend(layer, x, like)
        if x.dtype != like.dtype:
            raise TypeError(f"{layer}: input dtype {x.dtype} does not match the layer's "
                            f"dtype {like.dtype}; convert one (x.astype or module.to(dtype))")
    return xp


def whole(v, name="argument"):
    """``v`` as an int; a clear TypeError for anything that is not a whole
    number (2.7, "3", None), where int() would quietly give 2 or fail
    somewhere else.  Integral floats (2.0) and NumPy integers are accepted."""
    import numbers
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or int(v) != v:
        raise TypeError(f"{name} must be a whole number, got {v!r}")
    return int(v)


def pair(v, name="argument"):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {v!r}")
        return whole(v[0], name), whole(v[1], name)
    return whole(v, name), whole(v, name)
