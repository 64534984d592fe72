"""``check_against_torch``: forward and every gradient equal torch's, once the
weights are copied.  torch is imported only when this is called."""
import numpy as np
from hypothesis import given, strategies as st

from .. import backend
from .. import random as mr_random
from ..grad_mode import no_grad
from .runner import example_settings, split_case, DEFAULT_EXAMPLES
from .strategies import upstream_gradients

# Relative tolerance per dtype, against the largest |value| of the reference
# tensor: float32 rounding over a few hundred terms, float64 near exact.
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-10}


def _build(m, kwargs):
    """A module instance: ``m`` itself, or ``m(**kwargs)`` for a class or factory."""
    if isinstance(m, type) or (callable(m) and not hasattr(m, "forward")):
        return m(**kwargs)
    return m


def assert_close(a, ref, rtol, what):
    """|a - ref| <= rtol * (max|ref| + |ref|), element-wise, with the worst element named."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    if a.shape != ref.shape:
        raise AssertionError(f"{what}: shape {a.shape}, torch's {ref.shape}")
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = np.abs(a - ref)
    bound = rtol * (scale + np.abs(ref))
    if not np.all(err <= bound):
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(f"{what}: {int((~(err <= bound)).sum())}/{a.size} elements differ "
                             f"from torch; worst at {i}: {a[i]!r} vs {ref[i]!r} "
                             f"(rtol {rtol:g} of max |torch| {scale:.3g})")


def compare_once(mr_module, torch_module, x, upstream, rtol=None):
    """One forward/backward of both on ``x`` (its dtype decides the precision)
    after copying minires's state_dict into torch."""
    import torch
    dtype = np.dtype(x.dtype)
    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[dtype]
    rtol = RTOL[dtype] if rtol is None else rtol
    mr_module.to(device=backend.device_of(x), dtype=dtype)
    torch_module.to(tdtype)
    sd = {k: torch.from_numpy(np.array(backend.to_numpy(v))) for k, v in
          mr_module.state_dict().items()}
    torch_module.load_state_dict(sd, strict=True)
    mr_module.train(torch_module.training)  # the same BatchNorm/Dropout behaviour
    name = type(mr_module).__name__
    mr_module.zero_grad()
    torch_module.zero_grad(set_to_none=True)  # torch too accumulates over calls
    y = mr_module(x)
    dx = mr_module.backward(upstream.astype(dtype))
    tx = torch.from_numpy(np.array(backend.to_numpy(x))).requires_grad_(True)
    ty = torch_module(tx)
    ty.backward(torch.from_numpy(np.array(backend.to_numpy(upstream), dtype=dtype)))
    where = f"{name} vs torch in {dtype}"
    assert_close(backend.to_numpy(y), ty.detach().numpy(), rtol, f"{where}: output")
    assert_close(backend.to_numpy(dx), tx.grad.numpy(), rtol, f"{where}: dx")
    tparams = dict(torch_module.named_parameters())
    for k, p in mr_module.named_parameters():
        tg = tparams[k].grad
        if p.grad is None or tg is None:
            assert p.grad is None and tg is None, (
                f"{where}: parameter {k!r} has a gradient in only one of them "
                f"(minires: {p.grad is not None}, torch: {tg is not None})")
            continue
        assert_close(backend.to_numpy(p.grad), tg.numpy(), rtol, f"{where}: grad of {k!r}")
    for k, b in mr_module.named_buffers():
        tb = dict(torch_module.named_buffers()).get(k)
        if tb is not None and b is not None and tb.dtype.is_floating_point:
            assert_close(backend.to_numpy(b), tb.numpy(), rtol, f"{where}: buffer {k!r}")


def check_against_torch(mr_module, torch_module, input_strategy, *, dtypes=(np.float32, np.float64),
                        train=True, rtol=None, max_examples=DEFAULT_EXAMPLES, settings=None, seed=0):
    """Parity with torch of the forward, dx, every parameter gradient and every
    floating buffer (BatchNorm's running statistics), in each of ``dtypes``.

    ``mr_module`` and ``torch_module`` are modules, or classes/factories called
    with the ``kwargs`` of ``(kwargs, x)`` cases -- minires's constructors take
    torch's arguments, so ``check_against_torch(nn.Conv2d, torch.nn.Conv2d,
    cases(conv_configs()))`` works as written.  minires's weights are copied
    into torch (state_dict keys must match).  ``train=False`` compares in eval
    mode.  ``rtol`` defaults to 2e-5 in float32 and 1e-10 in float64, relative
    to the largest |value| of torch's tensor.
    """
    @example_settings(max_examples, settings)
    @given(case=input_strategy, data=st.data())
    def run(case, data):
        kwargs, x = split_case(case, "check_against_torch")
        user_state = mr_random.get_rng_state()
        try:
            mr_random.manual_seed(seed)
            m, t = _build(mr_module, kwargs), _build(torch_module, kwargs)
            m.train(train), t.train(train)
            up = None
            for dtype in dtypes:
                xd = x.astype(dtype)
                if up is None:
                    with no_grad():
                        shape = tuple(m.to(dtype=np.dtype(dtype))(xd).shape)
                    up = data.draw(upstream_gradients(shape), label="upstream")
                    up = backend.to_device(up, backend.device_of(x))
                compare_once(m, t, xd, up, rtol)
        finally:
            mr_random.set_rng_state(user_state)

    run()
