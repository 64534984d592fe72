"""``check_against_torch``: forward and every gradient equal torch's, once the
weights are copied.  torch is imported only when this is called."""
import numpy as np

from .. import backend
from ..grad_mode import no_grad
from .runner import DEFAULT_EXAMPLES, for_each_case

# Relative tolerance per dtype, against the largest |value| of the reference
# tensor: float32 rounding over a few hundred terms, float64 near exact.
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-10}
# float32 results are compared with torch in float64 (not with torch's own
# float32 result, which on the CPU accumulates in double and is itself off),
# and may also be off by ATOL32 -- torch.testing's float32 default.  A result
# that cancels to near zero (batch norm's dx over two values per channel:
# (dy - mean dy)(1 - x_hat^2)) keeps the absolute error of its O(1) terms,
# which no relative bound can allow for.
ATOL32 = 1e-5


def _build(m, kwargs):
    """A module instance: ``m`` itself, or ``m(**kwargs)`` for a class or factory."""
    if isinstance(m, type) or (callable(m) and not hasattr(m, "forward")):
        return m(**kwargs)
    return m


def assert_close(a, ref, rtol, what, atol=0.0):
    """|a - ref| <= rtol * (max|ref| + |ref|) + atol, element-wise, with the
    worst element named."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    if a.shape != ref.shape:
        raise AssertionError(f"{what}: shape {a.shape}, torch's {ref.shape}")
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = np.abs(a - ref)
    bound = rtol * (scale + np.abs(ref)) + atol
    if not np.all(err <= bound):
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        extra = f", atol {atol:g}" if atol else ""
        raise AssertionError(f"{what}: {int((~(err <= bound)).sum())}/{a.size} elements differ "
                             f"from torch; worst at {i}: {a[i]!r} vs {ref[i]!r} "
                             f"(rtol {rtol:g} of max |torch| {scale:.3g}{extra})")


def _torch_results(torch_module, state, x, upstream, dtype):
    """{what: array} of torch's forward, dx, parameter gradients and floating
    buffers, in ``dtype``, from minires's ``state`` (a state_dict)."""
    import torch
    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[dtype]
    torch_module.to(tdtype)
    torch_module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                                 strict=True)
    torch_module.zero_grad(set_to_none=True)  # torch too accumulates over calls
    tx = torch.from_numpy(np.array(x, dtype=dtype)).requires_grad_(True)
    ty = torch_module(tx)
    ty.backward(torch.from_numpy(np.array(upstream, dtype=dtype)))
    out = {"output": ty.detach().numpy(), "dx": tx.grad.numpy()}
    for k, p in torch_module.named_parameters():
        out[f"grad of {k!r}"] = None if p.grad is None else p.grad.numpy()
    for k, b in torch_module.named_buffers():
        if b.dtype.is_floating_point:
            out[f"buffer {k!r}"] = b.detach().numpy()
    return out


def compare_once(mr_module, torch_module, x, upstream, rtol=None):
    """One forward/backward of both on ``x`` (its dtype decides the precision)
    after copying minires's state_dict into torch.  In float32 the reference
    is torch in float64 on the same float32 values, with ``ATOL32`` allowed."""
    dtype = np.dtype(x.dtype)
    rtol = RTOL[dtype] if rtol is None else rtol
    mr_module.to(device=backend.device_of(x), dtype=dtype)
    state = {k: np.array(backend.to_numpy(v)) for k, v in mr_module.state_dict().items()}
    x_host, up_host = np.array(backend.to_numpy(x)), np.array(backend.to_numpy(upstream), dtype)
    exact = _torch_results(torch_module, state, x_host.astype(np.float64),
                           up_host.astype(np.float64), np.dtype(np.float64))
    mr_module.train(torch_module.training)  # the same BatchNorm/Dropout behaviour
    mr_module.zero_grad()
    ours = {"output": mr_module(x)}
    ours["dx"] = mr_module.backward(upstream.astype(dtype))
    for k, p in mr_module.named_parameters():
        ours[f"grad of {k!r}"] = p.grad
    for k, b in mr_module.named_buffers():
        if b is not None and b.dtype.kind == "f":
            ours[f"buffer {k!r}"] = b
    where = f"{type(mr_module).__name__} vs torch in {dtype}"
    for what, ref in exact.items():
        if what not in ours and what.startswith("buffer"):
            continue  # a torch buffer minires does not keep
        mine = ours.get(what)
        if mine is None or ref is None:
            assert mine is None and ref is None, (
                f"{where}: {what} exists in only one of them "
                f"(minires: {mine is not None}, torch: {ref is not None})")
            continue
        assert_close(backend.to_numpy(mine), ref, rtol, f"{where}: {what}",
                     ATOL32 if dtype == np.float32 else 0.0)


def check_against_torch(mr_module, torch_module, input_strategy, *, dtypes=(np.float32, np.float64),
                        train=True, rtol=None, max_examples=DEFAULT_EXAMPLES, settings=None, seed=0):
    """Parity with torch of the forward, dx, every parameter gradient and every
    floating buffer (BatchNorm's running statistics), in each of ``dtypes``.

    ``mr_module`` and ``torch_module`` are modules, or classes/factories called
    with the ``kwargs`` of ``(kwargs, x)`` cases -- minires's constructors take
    torch's arguments, so ``check_against_torch(nn.Conv2d, torch.nn.Conv2d,
    cases(conv_configs()))`` works as written.  minires's weights are copied
    into torch (state_dict keys must match).  ``train=False`` compares in eval
    mode.  Element by element, ``|mine - torch| <= rtol * (max|torch| + |torch|)``
    (+ 1e-5 in float32, torch.testing's float32 atol, ``ATOL32``), so up to
    ``2 * rtol * max|torch|`` at the largest element; ``rtol`` defaults to 2e-5 in
    float32 and 1e-10 in float64, and in float32 the reference is torch in
    float64 (docs/testing.md states the same bound).
    """
    def one_case(kwargs, x, draw_upstream):
        m, t = _build(mr_module, kwargs), _build(torch_module, kwargs)
        m.train(train)
        t.train(train)
        # onto x's device first (as check_module does): a CuPy x into a module
        # still on the host would fail the backend check before any comparison
        m.to(device=backend.device_of(x), dtype=np.dtype(dtypes[0]))
        with no_grad():
            shape = m(x.astype(dtypes[0])).shape
        up = draw_upstream(shape)
        for dtype in dtypes:
            compare_once(m, t, x.astype(dtype), up, rtol)

    for_each_case("check_against_torch", mr_module, input_strategy, one_case, max_examples,
                  settings, seed)
