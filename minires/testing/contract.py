"""The module contract, one check per promise (see minires/nn/module.py).

Each ``check_*(factory, kwargs, x, upstream)`` builds fresh modules with
``factory(**kwargs)``, runs one promise on the float64 input ``x`` and raises
``AssertionError`` naming the module and what broke.  ``check_module`` runs
them all over hypothesis examples.
"""
import copy

import numpy as np

from .. import backend, gradcheck
from .. import random as mr_random
from ..grad_mode import no_grad


def _name(m):
    return type(m).__name__


def _fresh(factory, kwargs, dtype=np.float64, like=None):
    """A new module from the factory, in ``dtype`` on ``like``'s device."""
    m = factory(**kwargs)
    device = backend.device_of(like) if like is not None else None
    return m.to(device=device, dtype=dtype)


def _run(m, x, dy):
    """(y, dx, {name: grad copy}) of one forward/backward from zeroed grads."""
    m.zero_grad()
    y = m(x)
    dx = m.backward(dy.astype(y.dtype))
    return y, dx, {k: None if p.grad is None else p.grad.copy()
                   for k, p in m.named_parameters()}


def _close(a, b, rtol=1e-10):
    a, b = backend.to_numpy(a), backend.to_numpy(b)
    scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= rtol * scale))


def check_gradients_train(factory, kwargs, x, upstream, **gradcheck_kwargs):
    """Central differences agree with backward in train mode (float64)."""
    m = _fresh(factory, kwargs, like=x).train()
    gradcheck(m, x, **gradcheck_kwargs)


def check_gradients_eval(factory, kwargs, x, upstream, **gradcheck_kwargs):
    """... and in eval mode, after a training forward has moved any running
    statistics away from their initial values."""
    m = _fresh(factory, kwargs, like=x).train()
    m(x)
    m.clear_caches()
    gradcheck(m.eval(), x, **gradcheck_kwargs)


def check_grads_accumulate(factory, kwargs, x, upstream):
    """Two backward calls without zero_grad add up: grad == 2 x one call's."""
    m = _fresh(factory, kwargs, like=x)
    state = mr_random.get_rng_state()  # dropout draws the same mask both times
    _, _, once = _run(m, x, upstream)
    m.zero_grad()
    for _ in range(2):
        mr_random.set_rng_state(state)
        y = m(x)
        m.backward(upstream.astype(y.dtype))
    for k, p in m.named_parameters():
        if once[k] is None:
            continue
        assert p.grad is not None, f"{_name(m)}: parameter {k!r} lost its gradient on the " \
                                   "second backward"
        assert _close(p.grad, 2 * once[k]), (
            f"{_name(m)}: parameter {k!r}: after two backward calls the gradient is not twice "
            f"one call's (max |grad - 2 g1| = "
            f"{float(np.max(np.abs(backend.to_numpy(p.grad - 2 * once[k])))):.3g}); backward "
            "must add into p.grad (p.accumulate), not assign it")


def check_called_twice(factory, kwargs, x, upstream):
    """A module called twice in one forward backpropagates both calls, newest
    first: the results equal those of two separate forward/backward pairs."""
    m = _fresh(factory, kwargs, like=x)
    ref = copy.deepcopy(m)
    x2 = -x[..., ::-1]  # a different input of the same shape, still kink-free
    g2 = upstream[..., ::-1].copy() * 0.5 - 0.25
    state = mr_random.get_rng_state()
    y1_ref, dx1_ref, grads1 = _run(ref, x, upstream)
    y2_ref, dx2_ref, grads2 = _run(ref, x2, g2)
    mr_random.set_rng_state(state)
    m.zero_grad()
    y1, y2 = m(x), m(x2)
    dx2 = m.backward(g2.astype(y2.dtype))
    dx1 = m.backward(upstream.astype(y1.dtype))
    name = _name(m)
    assert _close(y1, y1_ref) and _close(y2, y2_ref), \
        f"{name}: a second call changed the outputs of the calls"
    assert _close(dx2, dx2_ref), (
        f"{name}: called twice, the first backward did not return the second call's dx: "
        "backward must consume the newest cache first (self._restore pops the last)")
    assert _close(dx1, dx1_ref), f"{name}: called twice, the first call's dx is wrong"
    for k, p in m.named_parameters():
        if grads1[k] is None and grads2[k] is None:
            continue
        want = sum(g for g in (grads1[k], grads2[k]) if g is not None)
        assert p.grad is not None and _close(p.grad, want), (
            f"{name}: parameter {k!r}: called twice, the gradient is not the sum of both calls'")


def _held_arrays(m):
    """(module path, attribute) of every array a module holds outside its
    parameters, buffers and children: where a stray cache would hide."""
    held = {}
    for path, mod in m.named_modules():
        for k, v in vars(mod).items():
            if k in mod._buffers or k in ("_parameters", "_buffers", "_modules"):
                continue
            if _holds_array(v):
                held[(path, k)] = id(v)
    return held


def _holds_array(v, depth=0):
    if hasattr(v, "shape") and hasattr(v, "dtype") and getattr(v, "ndim", 0) > 0:
        return True
    if depth < 2 and isinstance(v, (list, tuple)):
        return any(_holds_array(e, depth + 1) for e in v)
    if depth < 2 and isinstance(v, dict):
        return any(_holds_array(e, depth + 1) for e in v.values())
    return False


def check_no_grad(factory, kwargs, x, upstream):
    """Under no_grad() a forward keeps no cache (nothing for backward, no stray
    array attribute), gives the same output, and backward then raises."""
    m = _fresh(factory, kwargs, like=x)
    state = mr_random.get_rng_state()
    y_ref = copy.deepcopy(m)(x)
    mr_random.set_rng_state(state)
    before = _held_arrays(m)
    with no_grad():
        y = m(x)
    name = _name(m)
    waiting = [p or name for p, mod in m.named_modules() if mod._caches]
    assert not waiting, f"{name}: under no_grad() these modules kept a cache: {waiting}"
    new = [f"{p + '.' if p else ''}{k}" for (p, k), i in _held_arrays(m).items()
           if before.get((p, k)) != i]
    assert not new, (f"{name}: under no_grad() the forward stored arrays in {new}; "
                     "keep caches with self._save, which no_grad turns off")
    assert _close(y, y_ref), f"{name}: the output under no_grad() differs from the output with it"
    try:
        m.backward(upstream.astype(y.dtype))
    except (RuntimeError, ValueError):
        return
    raise AssertionError(f"{name}: backward after a no_grad() forward returned instead of "
                         "raising (it used a stale or invented cache)")


def check_dtype_and_device(factory, kwargs, x, upstream):
    """float32 stays float32 (no upcast), float64 stays float64, and output,
    dx and every gradient are on the input's device."""
    for dtype in (np.float32, np.float64):
        m = _fresh(factory, kwargs, dtype, like=x)
        xd = x.astype(dtype)
        y, dx, grads = _run(m, xd, upstream)
        name = _name(m)
        for what, a in [("output", y), ("dx", dx)] + [(f"grad of {k!r}", g)
                                                     for k, g in grads.items()]:
            if a is None:
                continue
            assert a.dtype == dtype, (f"{name}: {dtype.__name__} in, {what} is {a.dtype}: "
                                      "some buffer is allocated in a fixed dtype (a bare "
                                      "zeros() is float64); allocate with the input's dtype")
            assert backend.device_of(a) == backend.device_of(xd), (
                f"{name}: {what} is on {backend.device_of(a)}, the input on "
                f"{backend.device_of(xd)}")


def check_backward_before_forward(factory, kwargs, x, upstream):
    """backward before any forward is a clear error naming the module (or, for
    a block, the layer inside it that found no cache)."""
    probe = _fresh(factory, kwargs, like=x)
    with no_grad():
        y = probe(x)
    m = _fresh(factory, kwargs, like=x)
    names = {type(mod).__name__ for mod in m.modules()}
    try:
        m.backward(upstream.astype(y.dtype))
    except (RuntimeError, ValueError) as e:
        assert any(n in str(e) for n in names), (
            f"{_name(m)}: backward before forward raised an error that names none of its "
            f"layers ({sorted(names)}): {e}")
        return
    raise AssertionError(f"{_name(m)}: backward before any forward returned instead of raising")


def check_state_dict(factory, kwargs, x, upstream):
    """state_dict -> load_state_dict into a differently initialised module
    gives the same eval output bit for bit, and the load copies (changing the
    source afterwards leaves the loaded module alone)."""
    src = _fresh(factory, kwargs, like=x).train()
    src(x)  # moves running statistics off their initial values
    src.clear_caches()
    dst = _fresh(factory, kwargs, like=x)  # the init stream has moved on: other weights
    sd = src.state_dict()
    dst.load_state_dict(sd)
    name = _name(src)
    assert list(dst.state_dict()) == list(sd), f"{name}: state_dict keys differ after loading"
    src.eval()
    dst.eval()
    with no_grad():
        y_src, y_dst = src(x), dst(x)
    assert np.array_equal(backend.to_numpy(y_src), backend.to_numpy(y_dst)), (
        f"{name}: after load_state_dict the eval outputs differ (max |diff| = "
        f"{float(np.max(np.abs(backend.to_numpy(y_src - y_dst)))):.3g}): some state that "
        "affects the output is neither a parameter nor a registered buffer")
    for k, v in src.state_dict().items():
        if getattr(v, "size", 0) and v.dtype.kind == "f":
            v += 1.0
    with no_grad():
        y_after = dst(x)
    assert np.array_equal(backend.to_numpy(y_after), backend.to_numpy(y_dst)), (
        f"{name}: load_state_dict kept references to the source's arrays instead of copies")


def randomize_batchnorm(module, low=0.5, high=1.5, shift=0.5):
    """Give every BatchNorm in ``module`` random weights in [low, high) and
    biases in [-shift, shift), as after training, and return the module.

    At initialisation (weight 1, bias 0) a BatchNorm followed by a ReLU puts
    the ReLU's kink at the batch mean: any batch whose values are spaced
    evenly -- hypothesis's favourite inputs -- has an element exactly at the
    mean, normalised to exactly 0, and finite differences there are wrong by
    half the slope.  A random bias moves the kink off every such point.  The
    draws come from minires's ``init`` stream, so they follow the seed."""
    from ..nn.norm import _BatchNorm
    from ..random import generator
    rng = generator("init")
    for m in module.modules():
        if isinstance(m, _BatchNorm) and m.weight is not None:
            n = m.weight.data.shape[0]
            like = m.weight.data
            m.weight.data = backend.to_device(rng.uniform(low, high, n), backend.device_of(
                like)).astype(like.dtype)
            if m.bias is not None:
                m.bias.data = backend.to_device(rng.uniform(-shift, shift, n),
                                                backend.device_of(like)).astype(like.dtype)
    return module


CHECKS = {
    "gradients_train": check_gradients_train,
    "gradients_eval": check_gradients_eval,
    "grads_accumulate": check_grads_accumulate,
    "called_twice": check_called_twice,
    "no_grad": check_no_grad,
    "dtype_and_device": check_dtype_and_device,
    "backward_before_forward": check_backward_before_forward,
    "state_dict": check_state_dict,
}
