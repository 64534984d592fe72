"""Finite-difference gradient checking for hand-written backward passes.

``gradcheck(module, x)`` compares every gradient a module's ``backward``
produces (for each floating-point input and each parameter) with central
differences of the scalar ``sum(f(x) * g)``, where ``g`` is a random,
non-uniform upstream gradient.  (An all-ones ``g`` would hide bugs such as
batch norm's missing mean term, whose contribution sums to zero against it.)

Everything runs on a float64 copy, so the checked module is never touched and
eps can be small.  Between the perturbed calls the checker restores every
buffer (BatchNorm running statistics) and the state of every ``minires.random``
stream, so that dropout draws the same mask in every call and the function
being differentiated is the same one each time.

Tensors of at most ``max_elements`` values are checked element by element;
larger ones along ``n_directions`` random unit directions ``d``, comparing
``(L(x + eps d) - L(x - eps d)) / 2eps`` with ``<grad, d>`` (two calls per
direction instead of two per element), where ``L(x) = sum(f(x) * g)``.

``method="complex"`` takes the complex-step derivative ``Im L(x + ih d) / h``
instead (see ``derivatives.py``): one call per element, no subtraction, so it
is exact to rounding and there is no eps to tune.  It needs a forward that
accepts complex input.
"""

import numpy

from . import backend
from . import derivatives
from . import random as mr_random
from .gradcheck_targets import make_target

FLOAT64 = numpy.float64


def gradcheck(module_or_function, *inputs, atol=1e-6, rtol=1e-4, eps=None, max_elements=512,
              n_directions=16, seed=0, raise_exception=True, method="central",
              kinks="one-sided"):
    """Check analytic gradients against central finite differences.

    ``module_or_function`` is either

    * a ``minires.nn.Module``: the checker calls ``m.zero_grad()``,
      ``y = m(*inputs)`` and ``dx = m.backward(g)``, then reads ``p.grad`` of
      every parameter.  When ``y`` is 0-d (a loss such as
      ``CrossEntropyLoss()(logits, target)``) and ``backward`` can be called
      without arguments, it calls ``m.backward()`` and scales the gradients by
      the scalar ``g``; or
    * a pair of callables ``(forward, backward)``: ``forward(*inputs) -> y``
      and ``backward(dy) -> grads``, where ``grads`` is one array (a single
      differentiable input) or a tuple with one gradient per floating-point
      input, in order.  ``backward`` is called right after ``forward`` on the
      same inputs, so the pair may share a cache through a closure.

    Floating-point inputs are copied to float64 and differentiated; anything
    else (integer class targets, Python numbers) is passed through untouched.
    When a module's ``backward`` returns one array it is taken as the gradient
    of the first input, and the other inputs are held constant.  A single
    output array is supported (modules with several inputs/outputs are not).

    ``method`` is ``"central"`` (the default: central differences with step
    ``eps``, 1e-6 unless given) or ``"complex"`` (the complex step with
    ``h = eps``, 1e-20 unless given).  The complex step differentiates a
    complex128 copy of the inputs and parameters, so every op in the forward
    must accept complex numbers and follow their analytic continuation
    (``x * x``, not ``abs(x) ** 2``).  minires's layers check for real
    floating-point input and refuse complex, so use it with your own
    ``(forward, backward)`` pairs and modules, or minires's functional ops.
    Being exact to rounding, it can be run with rtol near 1e-12.

    A value passes when ``|analytic - numeric| <= atol + rtol * |numeric|``.

    ``kinks`` says what to do where the central difference straddles a kink:
    a ReLU input within eps of 0 somewhere inside the module, which no choice
    of the module's inputs can rule out in a deep block.  There the central
    difference is no derivative at all, but a one-sided difference on x's own
    side still is.  With ``"one-sided"`` (the default), for each value that
    fails the central comparison (and only those), the checker also takes the
    forward and the backward one-sided slopes (second order, from x, x +- eps/2
    and x +- eps) and each side's third difference (out to x +- 3eps/2).  The
    value passes when the two slopes disagree (so a kink lies within eps) and
    the analytic value matches the slope of a side whose third difference is
    within the tolerance (the function is smooth there); the report counts
    such values.  A wrong gradient still fails: on a smooth stretch both sides
    agree with the central difference, and at a kink it would have to match a
    smooth side's slope.  ``"fail"`` counts every central mismatch.  The
    complex step has no such fallback.

    Returns ``{name: worst absolute error}`` (``"input0"``, ``"weight"``,
    ``"0.bias"`` ...).  On failure raises ``AssertionError`` with a per-tensor
    report (worst error, where, analytic and numeric values), or returns
    ``False`` when ``raise_exception=False``.
    """
    if method not in ("central", "complex"):
        raise ValueError(f"gradcheck: method must be 'central' or 'complex', got {method!r}")
    if kinks not in ("one-sided", "fail"):
        raise ValueError(f"gradcheck: kinks must be 'one-sided' or 'fail', got {kinks!r}")
    if eps is None:
        eps = derivatives.DEFAULT_STEP if method == "complex" else 1e-6
    user_rng_state = mr_random.get_rng_state()
    try:
        target = make_target(module_or_function, user_rng_state)
        inputs = [_float64_copy(x) for x in inputs]
        diff_positions = [i for i, x in enumerate(inputs) if _is_float_array(x)]
        if not diff_positions and not target.parameters():
            raise ValueError("gradcheck: nothing to differentiate (no floating-point input "
                             "and no parameter)")
        rng = numpy.random.default_rng(seed)
        checks = _run_checks(target, inputs, diff_positions, rng,
                             atol, rtol, eps, max_elements, n_directions, method, kinks)
    finally:
        mr_random.set_rng_state(user_rng_state)

    if all(c.passed for c in checks):
        return {c.name: c.worst_error for c in checks if c.name is not None}
    if raise_exception:
        raise AssertionError(_report(target.label, checks, atol, rtol, eps, method))
    return False


# --------------------------------------------------------------------------- checking
class _Check:
    """The outcome for one tensor (or a whole-call problem when ``name`` is None)."""

    def __init__(self, name, elementwise=True, count=0):
        self.name, self.elementwise, self.count = name, elementwise, count
        self.note = ""  # e.g. ", no gradient (taken as 0)"
        self.worst_error, self.n_bad, self.where = 0.0, 0, None
        self.n_kink = 0  # values that straddled a kink and matched a one-sided difference
        self.analytic = self.numeric = None
        self.problem = None  # a sentence when the tensor could not be compared at all

    @property
    def passed(self):
        return self.problem is None and self.n_bad == 0


def _run_checks(target, inputs, diff_positions, rng, atol, rtol, eps, max_elements,
                n_directions, method, kinks):
    upstream = {}

    def make_upstream(y):
        if not hasattr(y, "ndim"):
            raise TypeError(f"gradcheck: the forward returned {type(y).__name__}, "
                            "expected one array")
        if y.ndim == 0:  # a loss: any nonzero scalar, sign and size random
            g = numpy.asarray(rng.uniform(0.5, 1.5) * rng.choice([-1.0, 1.0]))
        else:
            g = rng.standard_normal(y.shape)
        g = backend.to_device(g.astype(FLOAT64), backend.device_of(y))
        # Copied before backward runs: a backward that reuses y's memory must not change it.
        upstream["y"] = y.astype(FLOAT64, copy=True)
        return g

    y, g, input_grads, param_grads = target.forward_backward(inputs, make_upstream)
    # Host copies now: a later forward may overwrite memory the gradients alias.
    input_grads = _host_copies(input_grads)
    param_grads = {k: _host_copies(v) for k, v in param_grads.items()}
    whole = _Check(None)
    if y.dtype != FLOAT64:
        whole.problem = (f"the output is {y.dtype}, not float64, for float64 inputs and "
                         "parameters: some buffer was allocated in a fixed dtype")
        return [whole]

    def output():
        # A copy: Identity or Flatten return views of the input being perturbed.
        return target.forward_only(inputs).astype(FLOAT64, copy=True)

    def slope(y_up, y_down, step):
        # sum((f(x+) - f(x-)) * g) / step: differencing outputs before summing avoids
        # the cancellation of subtracting two large sums.
        return _dot(y_up - y_down, g) / step

    base, again = upstream["y"], output()
    if not numpy.isfinite(backend.to_numpy(base)).all():
        whole.problem = "the forward returned non-finite values (inf or nan)"
        return [whole]
    drift = float(backend.to_numpy(abs(again - base).max())) if base.size else 0.0
    if not drift <= 1e-12 * max(1.0, float(backend.to_numpy(abs(base).max()))):
        whole.problem = (f"the forward is not reproducible: the same inputs gave outputs "
                         f"{drift:.3g} apart (randomness or state that gradcheck cannot freeze?)")
        return [whole]

    per_input = _match_input_grads(input_grads, diff_positions, len(inputs))
    if method == "complex":
        # From here on the values perturbed are complex copies; the analytic
        # gradients above came from the real float64 code path.
        target.to_complex()
        inputs = [derivatives.complex_copy(x) if i in diff_positions else x
                  for i, x in enumerate(inputs)]
        problem = derivatives.probe(target, inputs)
        if problem:
            whole.problem = problem
            return [whole]

    def complex_output():  # the imaginary part is the derivative: no cast to float64
        return target.forward_only(inputs).copy()

    checks, tensors = [], []
    for pos in diff_positions:
        tensors.append((f"input{pos}", inputs[pos], per_input.get(pos, _MISSING)))
    for name, p in target.parameters():
        tensors.append((name, p.data, param_grads.get(name)))

    # Each ``value`` is perturbed in place: the float64 input copies and the
    # parameters of the float64 module copy are the very arrays the forward reads.
    for name, value, analytic in tensors:
        elementwise = value.size <= max_elements
        check = _Check(name, elementwise, value.size if elementwise else n_directions)
        checks.append(check)
        if analytic is _MISSING:
            check.problem = "backward returned no gradient for this input"
            continue
        if analytic is None:  # a parameter that got no gradient: numeric decides
            analytic_np = numpy.zeros(value.shape)
            check.note = ", no gradient (taken as 0)"
        else:
            analytic_np = analytic
            if analytic_np.shape != tuple(value.shape):
                check.problem = (f"analytic gradient has shape {analytic_np.shape}, "
                                 f"expected {tuple(value.shape)}")
                continue
        if value.size == 0:
            continue
        if method == "complex":
            (at, along), sides = derivatives.complex_step(complex_output, g, value, eps), None
        else:
            at, along, sides = derivatives.central(output, slope, value, eps,
                                                   base if kinks == "one-sided" else None)
        ana, num, where = (derivatives.elementwise(at, value, analytic_np) if elementwise else
                           derivatives.directional(along, value, analytic_np, n_directions, rng))
        _compare(check, ana, num, where, atol, rtol, sides)
    return checks


_MISSING = object()


def _match_input_grads(grads, diff_positions, n_inputs):
    """{input position: gradient} from what backward returned."""
    if grads is None:
        return {}
    if hasattr(grads, "shape"):
        return {diff_positions[0]: grads} if diff_positions else {}
    grads = list(grads)
    if len(grads) == len(diff_positions):
        return {p: g for p, g in zip(diff_positions, grads) if g is not None}
    if len(grads) == n_inputs:
        return {p: grads[p] for p in diff_positions if grads[p] is not None}
    raise ValueError(f"gradcheck: backward returned {len(grads)} gradients for "
                     f"{len(diff_positions)} floating-point inputs")


def _within(ana, num, atol, rtol):
    return numpy.abs(ana - num) <= atol + rtol * numpy.abs(num)  # NaN: False


def _matches_a_smooth_side(ana, forward, backward, atol, rtol):
    """True when a kink lies within eps (the one-sided slopes disagree) and
    ``ana`` matches the slope of a side on which the function is smooth."""
    (s_fwd, rough_fwd), (s_bwd, rough_bwd) = forward, backward
    if _within(s_fwd, s_bwd, atol, rtol) or _within(s_bwd, s_fwd, atol, rtol):
        return False  # no kink: the central difference was right to fail
    # A side is smooth when its third difference is within the tolerance; the
    # side that holds the kink gives a slope between the two, which a wrong
    # gradient could match by chance.
    return any(rough <= atol + rtol * abs(s) and _within(ana, s, atol, rtol)
               for s, rough in ((s_fwd, rough_fwd), (s_bwd, rough_bwd)))


def _compare(check, ana, num, where, atol, rtol, sides=None):
    err = numpy.abs(ana - num)
    bound = atol + rtol * numpy.abs(num)
    bad = ~(err <= bound)  # NaN counts as bad
    if sides and bad.any():
        # A kink within eps: the one-sided slopes disagree; the analytic value
        # must then match the one on its side (see gradcheck's ``kinks``).
        excused = numpy.zeros_like(bad)
        for i in numpy.flatnonzero(bad):
            excused[i] = _matches_a_smooth_side(ana[i], *sides[i](), atol, rtol)
        check.n_kink = int(excused.sum())
        bad &= ~excused
        err = numpy.where(excused, 0.0, err)  # the worst error is among real comparisons
    check.n_bad = int(bad.sum())
    check.worst_error = float("nan") if numpy.isnan(err).any() else float(err.max())
    # Point at the worst violation when failing, else at the largest error.
    score = numpy.where(numpy.isnan(err), numpy.inf, err - bound if check.n_bad else err)
    i = int(numpy.argmax(score))
    check.where, check.analytic, check.numeric = where[i], float(ana[i]), float(num[i])


# --------------------------------------------------------------------------- report
def _report(label, checks, atol, rtol, eps, method="central"):
    step = "complex step h" if method == "complex" else "eps"
    lines = [f"gradcheck failed for {label} (float64; pass if |analytic - numeric| <= "
             f"atol + rtol*|numeric|, atol={atol:g}, rtol={rtol:g}, {step}={eps:g}):"]
    for c in checks:
        if c.name is None:
            lines.append(f"  FAIL: {c.problem}")
            continue
        scope = (f"{c.count} element(s)" if c.elementwise else
                 f"{c.count} random direction(s)") + c.note
        if c.problem is not None:
            lines.append(f"  {c.name} [{scope}]: FAIL: {c.problem}")
            continue
        status = f"FAIL on {c.n_bad}/{c.count}" if c.n_bad else "ok"
        if c.n_kink:
            status += (f" ({c.n_kink} straddled a kink within eps and matched a one-sided "
                       "difference)")
        where = c.where if isinstance(c.where, str) else f"index {c.where}"
        detail = (f"worst |a-n| = {c.worst_error:.3g}" if c.where is None else
                  f"worst |a-n| = {c.worst_error:.3g} at {where}: analytic "
                  f"{c.analytic:.10g}, numeric {c.numeric:.10g}")
        lines.append(f"  {c.name} [{scope}]: {status}; {detail}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers
def _is_float_array(x):
    return hasattr(x, "dtype") and hasattr(x, "shape") and x.dtype.kind == "f"


def _float64_copy(x):
    return x.astype(FLOAT64, copy=True) if _is_float_array(x) else x


def _dot(y, g):
    """sum(y * g) in float64, as a Python float."""
    return float(backend.to_numpy((y.astype(FLOAT64) * g).sum()))


def _host_copies(a):
    """float64 NumPy copies of an array, or of each array in a tuple/list."""
    if a is None:
        return None
    if isinstance(a, (tuple, list)):
        return type(a)(_host_copies(v) for v in a)
    return numpy.array(backend.to_numpy(a), dtype=FLOAT64, copy=True)
