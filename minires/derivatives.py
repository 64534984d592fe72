"""Numeric derivatives for ``gradcheck``: central differences (the default)
and the complex step (``method="complex"``).  Each method gives ``at(idx)``,
the derivative of ``sum(f * g)`` by one element, and ``along(orig, d)``, by a
unit direction; ``elementwise`` and ``directional`` run them over a tensor.

Complex step:
For a real-analytic ``L``, ``L(x + ih d) = L(x) + ih L'(x; d) - h^2/2 L''... ``,
so ``Im L(x + ih d) / h`` is the directional derivative with an error of order
``h^2``.  Unlike central differences there is no subtraction of two nearly
equal values, so ``h`` can be tiny (1e-20) and the result is exact to
rounding: no eps to tune, and tolerances can be tight enough to catch a
gradient that is wrong in the seventh digit.  (MyGrad moved its own tests to
it after float differences had hidden a bug.)

The price: every op on the way must accept complex numbers and compute their
analytic continuation -- ``x * x`` rather than ``abs(x) ** 2``, comparisons on
the real part.  Kinks (ReLU at 0) break analyticity exactly as they break
finite differences.
"""
import numpy

from . import backend

COMPLEX = numpy.complex128
DEFAULT_STEP = 1e-20


def complex_copy(x):
    """A complex128 copy of a real array, on its own device."""
    return x.astype(COMPLEX, copy=True)


def probe(target, inputs):
    """None when the forward runs on complex input and keeps an imaginary part,
    else a sentence saying why the complex step cannot be used."""
    try:
        y = target.forward_only(inputs)
    except (TypeError, ValueError) as e:
        return (f"the forward does not accept complex input ({type(e).__name__}: {e}); "
                "the complex step needs ops that work on complex numbers -- use "
                "method='central'")
    if getattr(y, "dtype", None) is None or y.dtype.kind != "c":
        return (f"the forward turned complex input into {getattr(y, 'dtype', type(y))} "
                "output (a buffer of a fixed real dtype, or a cast, drops the imaginary "
                "part); use method='central'")
    return None


def complex_step(output, g, value, h):
    """(at(idx), along(orig, d)): the complex-step derivative of
    sum(f * g) by one element of ``value``, or along a direction d from
    ``orig``, perturbing ``value`` in place along the imaginary axis."""
    def slope():
        # Im(sum(f(x + ih d) * g)) / h: no subtraction, so nothing cancels
        return float(backend.to_numpy((output().imag * g).sum())) / h

    def at(idx):
        orig = complex(value[idx])
        value[idx] = orig + 1j * h
        s = slope()
        value[idx] = orig
        return s

    def along(orig, d):
        value[...] = orig + 1j * h * d
        return slope()
    return at, along


def elementwise(at, value, analytic_np):
    """``at(idx)``, the numeric derivative by one element, for every element."""
    numeric = numpy.empty(value.shape)
    for idx in numpy.ndindex(*value.shape):
        numeric[idx] = at(idx)
    return analytic_np.ravel(), numeric.ravel(), list(numpy.ndindex(*value.shape))


def directional(along, value, analytic_np, n_directions, rng):
    """``along(orig, d)``, the numeric derivative along random unit directions
    d, against <grad, d>; ``value`` is restored afterwards."""
    device = backend.device_of(value)
    orig = value.copy()
    ana, num = numpy.empty(n_directions), numpy.empty(n_directions)
    for k in range(n_directions):
        d = rng.standard_normal(value.shape)
        d /= numpy.linalg.norm(d)
        num[k] = along(orig, backend.to_device(d, device))
        ana[k] = float((analytic_np * d).sum())
    value[...] = orig
    return ana, num, [f"direction {k}" for k in range(n_directions)]


def central(output, slope, value, eps, base=None):
    """Central differences: (at(idx), along(orig, d), sides) perturbing ``value``
    in place.  When ``base`` (the output at the unperturbed point) is given,
    ``sides`` gets, call by call, a function that looks at each side of that
    point separately (see ``one_sided``); it runs only when called, so a
    passing check costs nothing more."""
    sides = []

    def one_sided(set_at):
        """((slope, roughness) forward, (slope, roughness) backward) at x.

        slope: the three-point rule (4 f(x+h) - 3 f(x) - f(x+2h)) / 2h with
        h = eps/2, accurate to O(h^2) (a first-order difference is too coarse
        where BatchNorm on a tiny batch curves sharply).
        roughness: the third difference |f(x+3h) - 3 f(x+2h) + 3 f(x+h) - f(x)| / h,
        which is O(h^2) where f is smooth on that side and about
        |jump in slope| x (distance to the kink) where a kink lies there.
        Outputs are differenced against f(x) before summing, as in ``slope``."""
        h = eps / 2
        out = []
        for sign in (1.0, -1.0):
            s = []  # sum((f(x + k h) - f(x)) * g) for k = 1, 2, 3
            for k in (1, 2, 3):
                set_at(sign * k * h)
                s.append(slope(output(), base, 1.0))
            out.append((sign * (4 * s[0] - s[1]) / (2 * h),
                        abs(s[2] - 3 * s[1] + 3 * s[0]) / h))
        set_at(0.0)
        return tuple(out)

    def at(idx):
        orig = float(value[idx])  # a Python float: a CuPy element would be a view
        up, down = orig + eps, orig - eps
        value[idx] = up
        y_up = output()
        value[idx] = down
        y_down = output()
        value[idx] = orig
        if base is not None:
            def set_at(t):
                value[idx] = orig + t if t else orig
            sides.append(lambda: one_sided(set_at))
        return slope(y_up, y_down, up - down)  # the step actually taken

    def along(orig, d):
        value[...] = orig + eps * d
        y_up = output()
        value[...] = orig - eps * d
        y_down = output()
        if base is not None:
            def set_at(t):
                value[...] = orig + t * d
            sides.append(lambda: one_sided(set_at))
        return slope(y_up, y_down, 2 * eps)
    return at, along, sides
