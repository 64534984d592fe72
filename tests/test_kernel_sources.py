"""The custom CUDA kernels' bodies, checked on the CPU.

CI has no GPU, so the kernels in minires/kernels/ would otherwise never run
here.  Their bodies are plain C++ over an index ``i`` (CuPy's ElementwiseKernel
wraps them in a loop over the output), so this test wraps the SAME source
strings in a CPU loop, compiles them with the system C++ compiler, and checks
them against their NumPy twins -- the index arithmetic, the padding, stride
and dilation cases and the gather's summation order.  (The GPU suite,
tests/gpu/test_kernels_gpu.py, checks the compiled CUDA kernels themselves.)
Skipped when no C++ compiler is installed.
"""
import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from minires.kernels import conv as kconv
from minires.kernels import sgd as ksgd
from minires.nn.functional import conv_im2col as fconv
from minires.nn import Parameter
from minires.optim import SGD

CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler to build the kernel bodies")

CTYPES = {"float32": ("float", ctypes.c_float), "float64": ("double", ctypes.c_double)}
SCALARS = {"int64": ("long long", ctypes.c_longlong), "bool": ("bool", ctypes.c_bool)}


def _params(signature):
    """[(is_output, is_raw, type, name)] from ElementwiseKernel's (in, out) strings."""
    out = []
    for is_output, part in enumerate(signature):
        for p in part.split(","):
            words = p.split()
            raw = words[0] == "raw"
            out.append((bool(is_output), raw, words[-2], words[-1]))
    return out


def _cpp(name, signature, body, arrays):
    """One extern "C" function per dtype: the kernel body in a loop over i.
    ``arrays``: the non-raw parameters that are arrays (indexed by i); the
    others are scalars (in CuPy that is decided by the call)."""
    src = ["#include <cstddef>"]
    for dtype, (ctype, _) in CTYPES.items():
        args, pre, per_i = [], [], []
        for is_output, raw, typ, pname in _params(signature):
            if raw or pname in arrays:
                args.append(f"{'' if is_output else 'const '}T* {pname}_p")
                if raw:
                    pre.append(f"Raw {pname}{{{pname}_p}};")
                elif is_output:
                    per_i.append(f"T& {pname} = {pname}_p[i];")
                else:
                    per_i.append(f"const T {pname} = {pname}_p[i];")
            else:
                args.append(f"{'T' if typ == 'T' else SCALARS[typ][0]} {pname}")
        args.append("long long size")
        src += [f"namespace ns_{name}_{dtype} {{", f"typedef {ctype} T;",
                "struct Raw { const T* p; const T& operator[](long long j) const { return p[j]; } };",
                f'extern "C" void {name}_{dtype}({", ".join(args)}) {{',
                *pre, "for (long long i = 0; i < size; ++i) {", *per_i, body, "}", "}", "}"]
    return "\n".join(src)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    d = tmp_path_factory.mktemp("kernels")
    parts = [_cpp("im2col", kconv.IM2COL_SIGNATURE, kconv._IM2COL, ("col",)),
             _cpp("col2im", kconv.COL2IM_SIGNATURE, kconv._COL2IM, ("img",)),
             _cpp("sgd", ksgd.SIGNATURE, ksgd._SGD, ("g", "p", "buf"))]
    (d / "kernels.cpp").write_text("\n".join(parts))
    # no -ffast-math, no FMA contraction: IEEE arithmetic as written
    subprocess.run([CXX, "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-o",
                    str(d / "kernels.so"), str(d / "kernels.cpp")], check=True)
    return ctypes.CDLL(str(d / "kernels.so"))


def _ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def _geometry_args(shape, kernel, out_hw, stride, pads, dilation):
    n, c, h, w = shape
    vals = (n, c, h, w, *kernel, *out_hw, *stride, pads[0], pads[2], *dilation)
    return [ctypes.c_longlong(v) for v in vals]


GEOMETRIES = [  # kernel, stride, padding (t, b, l, r), dilation, input shape
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (2, 3, 8, 7)),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (3, 4, 9, 10)),
    ((1, 1), (2, 2), (0, 0, 0, 0), (1, 1), (2, 5, 7, 7)),
    ((7, 7), (2, 2), (3, 3, 3, 3), (1, 1), (2, 3, 15, 13)),
    ((3, 2), (1, 2), (2, 2, 1, 0), (2, 1), (2, 2, 6, 9)),
    ((2, 2), (3, 3), (0, 0, 0, 0), (1, 1), (1, 2, 8, 8)),
    ((3, 3), (1, 1), (2, 2, 2, 2), (2, 2), (2, 3, 5, 6)),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_im2col_body_equals_numpy_twin(lib, geometry, dtype):
    kernel, stride, pads, dilation, shape = geometry
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    twin = fconv.im2col(x, kernel, stride, pads, dilation)
    out_hw = twin.shape[-2:]
    col = np.full(twin.shape, np.nan, dtype=dtype)  # every element must be written
    getattr(lib, f"im2col_{dtype}")(_ptr(x), *_geometry_args(shape, kernel, out_hw, stride,
                                                              pads, dilation),
                                    _ptr(col), ctypes.c_longlong(col.size))
    assert np.array_equal(col, twin)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_col2im_gather_body_equals_numpy_twin(lib, geometry, dtype):
    kernel, stride, pads, dilation, shape = geometry
    out_hw = fconv.conv_output_size("test", shape[2:], kernel, stride, pads, dilation)
    col = np.random.default_rng(1).standard_normal((shape[0], shape[1], *kernel, *out_hw))
    col = col.astype(dtype)
    twin = fconv.col2im(col, shape, stride, pads, dilation)
    img = np.full(shape, np.nan, dtype=dtype)
    getattr(lib, f"col2im_{dtype}")(_ptr(col), *_geometry_args(shape, kernel, out_hw, stride,
                                                                pads, dilation),
                                    _ptr(img), ctypes.c_longlong(img.size))
    # the same additions in the same order: bit-identical
    assert np.array_equal(img, twin)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("momentum,nesterov,wd,damp", [(0.9, True, 5e-4, 0.0), (0.9, False, 1e-4, 0.2),
                                                       (0.0, False, 1e-3, 0.0), (0.5, False, 0.0, 0.0)])
def test_sgd_body_equals_twin(lib, dtype, momentum, nesterov, wd, damp):
    rng = np.random.default_rng(2)
    p0 = rng.standard_normal(50).astype(dtype)
    p_kernel, buf = p0.copy(), np.zeros_like(p0)
    twin = Parameter(p0.copy())
    opt = SGD([twin], lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd,
              dampening=damp)
    scalar = CTYPES[dtype][1]
    for step in range(4):
        g = rng.standard_normal(50).astype(dtype)
        twin.grad = g.copy()
        opt.step()
        getattr(lib, f"sgd_{dtype}")(_ptr(g), scalar(0.05), scalar(wd), scalar(momentum),
                                     scalar(damp), ctypes.c_bool(nesterov),
                                     ctypes.c_bool(step == 0), _ptr(p_kernel), _ptr(buf),
                                     ctypes.c_longlong(p_kernel.size))
        # same operations in the same order, both in IEEE arithmetic
        np.testing.assert_array_equal(p_kernel, twin.data)
