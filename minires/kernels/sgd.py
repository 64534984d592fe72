"""The SGD update as one CUDA kernel per parameter (twin: minires.optim.SGD.step).

The twin runs five or six array operations per parameter (decay, momentum
scale, momentum add, Nesterov, the step), each a kernel launch on the GPU;
for ResNet-20's 65 parameter tensors that is ~400 launches per step.  This
does the same arithmetic in one pass.  (The compiler may fuse a multiply and
an add into one FMA, so results can differ from the twin in the last bit.)
"""
import functools

from ..backend import cupy_or_none

_SGD = r"""
    T d = g;
    if (wd != (T)0) d += wd * p;
    if (mom != (T)0) {
        buf = first ? d : buf * mom + ((T)1 - damp) * d;
        d = nesterov ? d + mom * buf : buf;
    }
    p -= lr * d;
"""


# (in, out) parameters; g, p and buf are arrays, the others scalars
SIGNATURE = ("T g, T lr, T wd, T mom, T damp, bool nesterov, bool first", "T p, T buf")


@functools.lru_cache(maxsize=None)
def _kernel():
    cp = cupy_or_none()
    return cp.ElementwiseKernel(*SIGNATURE, _SGD, "minires_sgd")


def sgd_update(p, g, buf, lr, weight_decay, momentum, dampening, nesterov, first):
    """p -= lr * direction, updating the momentum buffer ``buf`` in place
    (``first``: the buffer is set to the gradient, as torch does on step 1).
    SGD uses it only with momentum; with momentum 0 ``buf`` is not touched."""
    t = p.dtype.type
    _kernel()(g, t(lr), t(weight_decay), t(momentum), t(dampening), bool(nesterov),
              bool(first), p, buf)
