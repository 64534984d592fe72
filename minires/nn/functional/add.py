"""The residual sum ``a + b`` on all cores.

A ResNet adds two activation-sized arrays per block in forward (F(x) plus
the shortcut) and two gradients in backward (x feeds both paths).  As
``a + b`` those run on one core while the others wait: measured in a
ResNet-20 step on 2 cores, the additions were about 20 ms of the ~40 ms
that ran on one core alone.  Elementwise, in batch chunks: the same bits on
any thread count.  The addition's backward needs no op: it hands dy
unchanged to both operands, and the blocks write that out themselves.
"""
from ...backend import get_array_module
from ... import parallel


def add(a, b):
    """A new array ``a + b``; same-shaped, same-dtype arrays run in batch
    chunks on all cores, anything else is NumPy's ``a + b``."""
    if a.shape != b.shape or a.dtype != b.dtype or a.ndim == 0:
        return a + b
    xp = get_array_module(a)
    out = xp.empty_like(a)
    parallel.map_chunks(lambda s: xp.add(a[s], b[s], out=out[s]), parallel.batch_slices(a),
                        like=a)
    return out
