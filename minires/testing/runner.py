"""``check_module``: every promise of the module contract, over hypothesis examples."""
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings as hsettings, strategies as st

from .. import backend
from .. import random as mr_random
from ..grad_mode import no_grad
from . import contract
from .strategies import upstream_gradients

DEFAULT_EXAMPLES = 10


def split_case(case, where):
    """``x`` -> ({}, x); ``(kwargs, x)`` -> (kwargs, x); anything else: a clear error."""
    if isinstance(case, tuple) and len(case) == 2 and isinstance(case[0], dict):
        kwargs, x = case
    else:
        kwargs, x = {}, case
    if not (hasattr(x, "dtype") and hasattr(x, "shape")) or x.dtype.kind != "f":
        raise TypeError(f"{where}: the input strategy must draw a float array x or a pair "
                        f"(kwargs, x); it drew {type(case).__name__}"
                        + (f" with x of dtype {x.dtype}" if hasattr(x, "dtype") else ""))
    return kwargs, x


def _describe(obj, depth=0):
    """What tells a factory apart: its source (or name), and for a closure the
    values it closes over, factories among them described the same way (a
    wrapper such as ``lambda: randomize_batchnorm(factory())`` has one source
    for every factory it wraps)."""
    import inspect
    try:
        text = inspect.getsource(obj)
    except (OSError, TypeError):
        text = getattr(obj, "__qualname__", type(obj).__name__)
    code = getattr(obj, "__code__", None)
    if code is not None:  # two lambdas on one line share their source, not their constants
        text += f"|{code.co_consts!r}|{code.co_names!r}"
    cells = getattr(obj, "__closure__", None) or ()
    for cell in cells:
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if callable(value) and depth < 3:
            text += "|" + _describe(value, depth + 1)
        else:
            text += "|" + repr(value)[:200]
    return text


def database_key(kind, factory, strategy):
    """A hypothesis example-database key per (checker, factory, strategy).

    Every check_module call runs the same inner function, so hypothesis's
    default key (a digest of that function's source) would be one key for
    all of them: a failing example saved for one layer would be replayed
    against the next, and a passing run of one would delete another's.
    The factory (its source and what it closes over, see ``_describe``) and
    what the strategy draws tell the calls apart."""
    import hashlib
    what = getattr(strategy, "minires_description", None) or repr(strategy)
    return hashlib.sha384(f"minires.testing.{kind}|{_describe(factory)}|{what}".encode()).digest()


def example_settings(max_examples, settings):
    if settings is not None:
        return settings
    # deadline=None: a gradcheck takes as long as the layer has parameters, and
    # a timing-dependent failure would be noise, not a contract violation.
    # No explain phase: its line tracer slows every replayed gradcheck several-fold.
    return hsettings(max_examples=max_examples, deadline=None,
                     phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target,
                             Phase.shrink],
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def for_each_case(kind, owner, input_strategy, body, max_examples, settings, seed):
    """Run ``body(kwargs, x, draw_upstream)`` on hypothesis examples of
    ``input_strategy``, minires's random streams seeded with ``seed`` for
    each example and the user's state restored afterwards.
    ``draw_upstream(shape)`` draws a random upstream gradient on x's device
    (drawn through hypothesis, so a failure shows it and shrinks it)."""
    @example_settings(max_examples, settings)
    @given(case=input_strategy, data=st.data())
    def run(case, data):
        kwargs, x = split_case(case, kind)

        def draw_upstream(shape):
            up = data.draw(upstream_gradients(tuple(shape)), label="upstream")
            return backend.to_device(up, backend.device_of(x))

        user_state = mr_random.get_rng_state()
        try:
            mr_random.manual_seed(seed)
            body(kwargs, x, draw_upstream)
        finally:
            mr_random.set_rng_state(user_state)

    run._hypothesis_internal_database_key = database_key(kind, owner, input_strategy)
    run()


def check_module(factory, input_strategy, *, checks=None, skip=(), max_examples=DEFAULT_EXAMPLES,
                 gradcheck_kwargs=None, settings=None, seed=0):
    """Check that the modules ``factory`` builds keep the whole module contract.

    ``factory`` is a class or callable returning a new module: ``factory()``
    when ``input_strategy`` draws arrays ``x``, or ``factory(**kwargs)`` when
    it draws pairs ``(kwargs, x)`` (``cases(conv_configs())`` does).  Inputs
    should be float64 and kink-free (``minires.testing.arrays``).

    For each of ``max_examples`` hypothesis examples it runs (``checks``
    selects by name, ``skip`` leaves some out; see ``contract.CHECKS``):

    * ``gradients_train`` / ``gradients_eval``: ``minires.gradcheck`` in float64,
      in train mode and in eval mode (after a training forward moved any
      running statistics); ``gradcheck_kwargs`` go to it (``atol``, ``rtol``,
      ``method="complex"`` ...);
    * ``grads_accumulate``: two backward calls add into ``p.grad``;
    * ``called_twice``: a module called twice backpropagates both calls,
      newest first;
    * ``no_grad``: ``no_grad()`` keeps no cache and backward then raises;
    * ``dtype_and_device``: float32 stays float32, float64 stays float64, on
      the input's device;
    * ``backward_before_forward``: a clear error naming the module;
    * ``state_dict``: a round trip gives the same eval output, by copy.

    The upstream gradient is drawn too (random, non-uniform).  minires's
    random streams are seeded with ``seed`` for each example (so a replayed
    failure builds the same weights) and restored afterwards.  A failure
    raises hypothesis's shrunk example and the failing check's message (for
    the gradient checks, gradcheck's per-tensor report).
    """
    selected = dict(contract.CHECKS)
    if checks is not None:
        unknown = set(checks) - set(selected)
        if unknown:
            raise ValueError(f"check_module: unknown checks {sorted(unknown)}; "
                             f"the checks are {list(contract.CHECKS)}")
        selected = {k: v for k, v in selected.items() if k in checks}
    for k in skip:
        if k not in contract.CHECKS:
            raise ValueError(f"check_module: cannot skip unknown check {k!r}; "
                             f"the checks are {list(contract.CHECKS)}")
        selected.pop(k, None)
    gkw = dict(gradcheck_kwargs or {})

    def one_case(kwargs, x, draw_upstream):
        x = x.astype(np.float64)
        with no_grad():
            y = factory(**kwargs).to(device=backend.device_of(x), dtype=np.float64)(x)
        up = draw_upstream(y.shape)
        for name, check in selected.items():
            mr_random.manual_seed(seed)
            extra = gkw if name.startswith("gradients") else {}
            try:
                check(factory, kwargs, x, up, **extra)
            except AssertionError as e:
                raise AssertionError(f"check_module [{name}]: {e}") from None

    for_each_case("check_module", factory, input_strategy, one_case, max_examples, settings,
                  seed)
