"""Each custom CUDA kernel against its NumPy twin (the plain xp code), on the GPU.

im2col/col2im must be bit-identical to the twin (same copies; col2im adds the
same terms in the same order); the fused SGD update may differ in the last bit
(FMA contraction)."""
import numpy as np
import pytest

import minires
from minires import kernels
from minires.nn.functional import conv_im2col as fconv
from minires.optim import SGD
from minires.nn import Parameter

pytestmark = pytest.mark.gpu

GEOMETRIES = [  # kernel, stride, padding (t, b, l, r), dilation, input shape
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (2, 3, 8, 7)),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (3, 4, 9, 10)),
    ((1, 1), (2, 2), (0, 0, 0, 0), (1, 1), (2, 5, 7, 7)),
    ((7, 7), (2, 2), (3, 3, 3, 3), (1, 1), (2, 3, 15, 13)),
    ((3, 2), (1, 2), (2, 2, 1, 0), (2, 1), (2, 2, 6, 9)),   # asymmetric "same"-style padding
    ((2, 2), (3, 3), (0, 0, 0, 0), (1, 1), (1, 2, 8, 8)),   # stride > kernel: pixels nobody reads
]


def _geometry_out(kernel, stride, pads, dilation, shape):
    return fconv.conv_output_size("test", shape[2:], kernel, stride, pads, dilation)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_im2col_kernel_equals_twin(geometry, dtype):
    kernel, stride, pads, dilation, shape = geometry
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    xg = minires.to_device(x, "cuda")
    col_kernel = fconv.im2col(xg, kernel, stride, pads, dilation)
    with kernels.disabled():
        col_twin = fconv.im2col(xg, kernel, stride, pads, dilation)
    col_numpy = fconv.im2col(x, kernel, stride, pads, dilation)
    assert col_kernel.shape == col_numpy.shape
    assert np.array_equal(minires.to_numpy(col_kernel), minires.to_numpy(col_twin))
    assert np.array_equal(minires.to_numpy(col_kernel), col_numpy)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_col2im_gather_kernel_equals_twin(geometry, dtype):
    kernel, stride, pads, dilation, shape = geometry
    oh, ow = _geometry_out(kernel, stride, pads, dilation, shape)
    col_shape = (shape[0], shape[1], *kernel, oh, ow)
    col = np.random.default_rng(1).standard_normal(col_shape).astype(dtype)
    cg = minires.to_device(col, "cuda")
    img_kernel = fconv.col2im(cg, shape, stride, pads, dilation)
    with kernels.disabled():
        img_twin = fconv.col2im(cg, shape, stride, pads, dilation)
    img_numpy = fconv.col2im(col, shape, stride, pads, dilation)
    assert img_kernel.shape == shape
    # the same additions in the same order: bit-identical, and deterministic
    assert np.array_equal(minires.to_numpy(img_kernel), minires.to_numpy(img_twin))
    assert np.array_equal(minires.to_numpy(img_kernel), img_numpy)
    again = fconv.col2im(cg, shape, stride, pads, dilation)
    assert np.array_equal(minires.to_numpy(again), minires.to_numpy(img_kernel))


def test_col2im_is_the_adjoint_of_im2col():
    """<im2col(x), c> == <x, col2im(c)> for the kernels themselves."""
    rng = np.random.default_rng(2)
    kernel, stride, pads, dilation, shape = GEOMETRIES[1]
    x = minires.to_device(rng.standard_normal(shape), "cuda")
    col = fconv.im2col(x, kernel, stride, pads, dilation)
    c = minires.to_device(rng.standard_normal(col.shape), "cuda")
    lhs = float((col * c).sum())
    rhs = float((x * fconv.col2im(c, shape, stride, pads, dilation)).sum())
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum,nesterov,wd,damp", [(0.9, True, 5e-4, 0.0),
                                                       (0.9, False, 1e-4, 0.2),
                                                       (0.0, False, 1e-3, 0.0),
                                                       (0.5, False, 0.0, 0.0)])
def test_fused_sgd_equals_twin(dtype, momentum, nesterov, wd, damp):
    rng = np.random.default_rng(3)
    shapes = [(16, 3, 3, 3), (16,), (10, 64)]
    w0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
    fused = [Parameter(minires.to_device(w.copy(), "cuda")) for w in w0]
    twin = [Parameter(minires.to_device(w.copy(), "cuda")) for w in w0]
    kw = dict(lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd, dampening=damp)
    opt_fused, opt_twin = SGD(fused, **kw), SGD(twin, **kw)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    for _ in range(5):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        for a, b, g in zip(fused, twin, grads):
            a.grad, b.grad = minires.to_device(g, "cuda"), minires.to_device(g, "cuda")
        opt_fused.step()
        with kernels.disabled():
            opt_twin.step()
        for a, b in zip(fused, twin):
            np.testing.assert_allclose(minires.to_numpy(a.data), minires.to_numpy(b.data),
                                       rtol=rtol, atol=rtol)
    if momentum:
        for a, b in zip(fused, twin):
            np.testing.assert_allclose(
                minires.to_numpy(opt_fused.state[id(a)]["momentum_buffer"]),
                minires.to_numpy(opt_twin.state[id(b)]["momentum_buffer"]), rtol=rtol, atol=rtol)
