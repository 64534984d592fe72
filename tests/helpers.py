"""Shared test helpers: one comparison rule and torch conversion."""
import numpy as np

from minires import backend

# rtol per dtype for layer parity (atol = rtol * max|ref|)
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


def to_np(a):
    """NumPy copy of a minires (NumPy/CuPy) array or a torch tensor."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return backend.to_numpy(a)


def assert_close(a, ref, rtol, what=""):
    """|a - ref| <= atol + rtol*|ref| element-wise, with atol = rtol * max|ref|.

    The absolute floor scales with the reference so values near zero (where
    a relative test is meaningless) are judged against the tensor's scale.
    """
    a, ref = to_np(a), to_np(ref)
    assert a.shape == ref.shape, f"{what}: shape {a.shape} != reference {ref.shape}"
    ref64 = ref.astype(np.float64)
    scale = float(np.max(np.abs(ref64))) if ref.size else 0.0
    atol = rtol * scale
    err = np.abs(a.astype(np.float64) - ref64)
    bound = atol + rtol * np.abs(ref64)
    bad = err > bound
    if bad.any():
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{a.size} elements differ; worst at {i}: "
            f"{a[i]!r} vs reference {ref[i]!r} (atol={atol:.3g}, rtol={rtol:.3g}, "
            f"max abs err {err.max():.3g})")


def rtol_for(dtype):
    return RTOL[np.dtype(dtype)]


def torch_tensor(a, requires_grad=False):
    import torch
    t = torch.from_numpy(np.ascontiguousarray(to_np(a)))
    return t.requires_grad_(requires_grad)


def copy_params_to_torch(mr_module, torch_module):
    """Load a minires module's state_dict into the matching torch module."""
    import torch
    sd = {k: torch.from_numpy(np.array(to_np(v))) for k, v in mr_module.state_dict().items()}
    torch_module.load_state_dict(sd, strict=True)


def random_upstream(rng, shape, dtype):
    """A random, non-uniform upstream gradient (all-ones would hide BN's dx)."""
    return rng.standard_normal(shape).astype(dtype)


def numerical_grad(f, a, h=1e-6):
    """Central differences of the scalar f() with respect to array a (in place)."""
    g = np.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    # a non-contiguous a reshapes to a COPY: perturbing it would leave a (and
    # f) unchanged and every numerical gradient silently 0
    assert np.shares_memory(flat, a), "numerical_grad: a must be contiguous (reshape made a copy)"
    assert np.shares_memory(gflat, g)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + h
        fp = f()
        flat[i] = orig - h
        fm = f()
        flat[i] = orig
        gflat[i] = (fp - fm) / (2 * h)
    return g


def wait_for(condition, proc, what, timeout=120):
    """Poll ``condition()`` until it holds: a guard against a hung child, not a
    speed check (``timeout`` is generous).  Fails at once if the child exits."""
    import time
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the child exited ({proc.returncode}) before {what}: "
                                 f"{proc.stderr.read()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
