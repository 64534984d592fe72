"""``with minires.no_grad():`` -- forward passes keep no caches for backward."""
import threading

_state = threading.local()


def is_grad_enabled():
    """True unless inside ``no_grad()``: whether forward passes keep caches for backward."""
    return getattr(_state, "enabled", True)


class no_grad:
    """Context manager (and decorator) that turns off cache keeping.

    Inside it modules store nothing for backward, so evaluation never holds a
    training step's memory, and calling ``backward`` raises.
    """

    def __enter__(self):
        self._prev = is_grad_enabled()
        _state.enabled = False
        return self

    def __exit__(self, *exc):
        _state.enabled = self._prev
        return False

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        wrapper.__doc__ = getattr(fn, "__doc__", None)
        return wrapper
