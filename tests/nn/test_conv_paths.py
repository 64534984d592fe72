"""The convolution's paths (pointwise, shifted slices, phases, im2col), each
against the plain reference loop (reference_ops) and torch; the ConvCache
each leaves."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings, strategies as st

from minires.nn.functional.conv import conv2d_backward, conv2d_forward
from tests.helpers import assert_close


@pytest.mark.parametrize("kernel, stride, size, path", [
    (1, 1, 6, "pointwise"), (3, 1, 6, "shifted_slices"), (3, 2, 6, "phases"), (3, 2, 7, "im2col")],
    ids=["pointwise", "shifted_slices", "phases", "im2col"])
def test_backward_leaves_its_cache_as_it_was(kernel, stride, size, path):
    """Backward reads the cache and changes nothing: a second backward from the
    same cache gives the same bits, and the cache still holds the input."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, size, size))
    y, cache = conv2d_forward(x, rng.standard_normal((4, 2, kernel, kernel)), rng.standard_normal(4),
                              stride, kernel // 2)
    assert cache.path == path
    before = tuple(cache)
    dy = rng.standard_normal(y.shape)
    first = conv2d_backward(dy, cache)
    second = conv2d_backward(dy, cache)
    assert all(a is b for a, b in zip(before, cache)) and cache.x is x
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_fast_conv_equals_the_reference_loop(data):
    """conv2d_forward/backward (every path: pointwise, shifted slices, chunked
    im2col) against reference_ops' plain loop, in float64, over strides,
    paddings, dilations, groups and bias, with enough images for several
    chunks; and the reference itself against torch, forward and backward."""
    from minires import parallel
    from minires.nn.functional import reference_ops
    k = data.draw(st.integers(1, 3), "k")
    stride, dilation = data.draw(st.integers(1, 2), "stride"), data.draw(st.integers(1, 2), "dil")
    padding = data.draw(st.integers(0, 3), "padding")
    size = data.draw(st.integers(dilation * (k - 1) + 1, 7), "size")
    groups = data.draw(st.sampled_from([1, 1, 2]), "groups")
    n = data.draw(st.integers(1, 9), "n")
    c, o = groups * data.draw(st.integers(1, 3), "c"), groups * data.draw(st.integers(1, 6), "o")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), "seed"))
    x = rng.standard_normal((n, c, size, size))
    w = rng.standard_normal((o, c // groups, k, k))
    b = rng.standard_normal(o) if data.draw(st.booleans(), "bias") else None
    y_ref, ref_cache = reference_ops.conv2d_forward(x, w, b, stride, padding, dilation, groups)
    dy = rng.standard_normal(y_ref.shape)
    old = parallel.CHUNK_BYTES
    parallel.CHUNK_BYTES = 8 * c * k * k * y_ref.shape[2] * y_ref.shape[3] * 2  # chunks of 2 images
    try:
        y, cache = conv2d_forward(x, w, b, stride, padding, dilation, groups)
        dx, dw, db = conv2d_backward(dy, cache)
    finally:
        parallel.CHUNK_BYTES = old
    dx_ref, dw_ref, db_ref = reference_ops.conv2d_backward(dy, ref_cache)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-12, atol=1e-12)
    # the reference against torch, so this is not minires against minires
    tx, tw = (torch.from_numpy(a).requires_grad_(True) for a in (x, w))
    tb = None if b is None else torch.from_numpy(b).requires_grad_(True)
    ty = TF.conv2d(tx, tw, tb, stride=stride, padding=padding, dilation=dilation, groups=groups)
    ty.backward(torch.from_numpy(dy))
    assert_close(y_ref, ty, 1e-10, "y")
    assert_close(dx_ref, tx.grad, 1e-10, "dx")
    assert_close(dw_ref, tw.grad, 1e-10, "dW")
    if b is not None:
        assert_close(db_ref, tb.grad, 1e-10, "db")
        np.testing.assert_allclose(db, db_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("o, size, stride", [(4, 16, 1), (3, 32, 2), (20, 2, 1), (40, 3, 2)],
                         ids=["blocked-columns", "blocked-columns-stride2", "more-channels-than-pixels",
                              "more-channels-than-pixels-stride2"])
def test_shape_dependent_products_match_torch(monkeypatch, o, size, stride):
    """The products that change with the shapes: output columns in 64-wide
    blocks (few channels, P a multiple of 64) and the weight gradient as one
    product over the chunk (more output channels than pixels)."""
    from minires.nn.functional import conv_phases
    from minires.nn.functional.conv_im2col import BLOCK_COLUMNS
    monkeypatch.setattr(conv_phases, "applies", lambda *args: False)  # im2col for stride 2
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 3, size, size))
    w = rng.standard_normal((o, 3, 3, 3))
    y, cache = conv2d_forward(x, w, None, stride, 1)
    assert cache.path == ("shifted_slices" if stride == 1 else "im2col")
    p = y.shape[2] * y.shape[3]
    assert (p % BLOCK_COLUMNS == 0 and p > BLOCK_COLUMNS) or o > p  # the branch is taken
    dy = rng.standard_normal(y.shape)
    dx, dw, _ = conv2d_backward(dy, cache)
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.from_numpy(w).requires_grad_(True)
    ty = TF.conv2d(tx, tw, stride=stride, padding=1)
    ty.backward(torch.from_numpy(dy))
    assert_close(y, ty, 1e-10, "y")
    assert_close(dx, tx.grad, 1e-10, "dx")
    assert_close(dw, tw.grad, 1e-10, "dW")


@pytest.mark.parametrize("grouping", ["by-rows", "per-offset", "transposed"],
                         ids=["dW-by-rows", "dW-per-offset", "dW-transposed"])
@pytest.mark.parametrize("k, padding, dilation, bias", [
    (3, 1, 1, False), (3, 0, 1, True), (3, 2, 2, False), (2, "same", 1, True), (5, (2, 1), 1, False),
    (3, 10, 10, False)],
    ids=["3x3-pad1", "3x3-valid-bias", "dilated", "same-asymmetric", "5x5-uneven",
         "dilation-wider-than-image"])
def test_stride1_path_without_im2col_matches_torch(monkeypatch, k, padding, dilation, bias, grouping):
    """Stride 1, one group, on the CPU: conv_shifted's products over shifted
    views of the flat padded image (forward, dW and dx), several chunks on
    two threads, against torch in float64.  Both layouts: column-shifted
    copies for 'same'-width convolutions (3x3-pad1, dilated,
    same-asymmetric), the padded wide grid for the others (valid,
    5x5-uneven); and the three ways of grouping the weight gradient's
    products (by kernel rows, one per offset, transposed by kernel rows)."""
    from minires import parallel
    from minires.nn.functional import conv_shifted
    monkeypatch.setattr(conv_shifted, "STACKED_WEIGHT_GRAD_TERMS", 1000 if grouping == "by-rows" else 0)
    monkeypatch.setattr(conv_shifted, "FEW_PIXELS", 0 if grouping == "transposed" else 256)
    monkeypatch.setattr(parallel, "CHUNK_BYTES", 4096)  # a few images per chunk
    monkeypatch.setattr(parallel, "MIN_CHUNKS", 1)
    parallel.set_num_threads(2)
    try:
        rng = np.random.default_rng(11)
        x = rng.standard_normal((6, 3, 7, 9))
        w = rng.standard_normal((4, 3, k, k))
        b = rng.standard_normal(4) if bias else None
        y, cache = conv2d_forward(x, w, b, 1, padding, dilation)
        dy = rng.standard_normal(y.shape)
        dx, dw, db = conv2d_backward(dy, cache)
    finally:
        parallel.set_num_threads(parallel.available_cores())
    assert cache.path == "shifted_slices", "the stride-1 path was not taken"
    _assert_matches_torch(x, w, b, dy, (y, dx, dw, db), stride=1, padding=padding, dilation=dilation)


def _assert_matches_torch(x, w, b, dy, got, **conv_args):
    """(y, dx, dW, db) against torch's conv2d with the same arguments, float64."""
    tx, tw = (torch.from_numpy(a).requires_grad_(True) for a in (x, w))
    tb = None if b is None else torch.from_numpy(b).requires_grad_(True)
    ty = TF.conv2d(tx, tw, tb, **conv_args)
    ty.backward(torch.from_numpy(dy))
    for mine, ref, what in zip(got, (ty, tx.grad, tw.grad, None if b is None else tb.grad),
                               ("y", "dx", "dW", "db")):
        if ref is not None:
            assert_close(mine, ref, 1e-10, what)


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_stride2_phase_path_matches_torch(data):
    """The stride-2 3x3 padding-1 convolution on its four phases (conv_phases):
    forward, dx, dW and db against torch in float64, over batch sizes,
    channels, even heights and widths (not only square), with and without
    bias, in chunks of a few images on two threads."""
    from minires import parallel
    n, c, o = (data.draw(st.integers(1, hi), name) for name, hi in (("n", 7), ("c", 5), ("o", 6)))
    h, w = (2 * data.draw(st.integers(1, 6), name) for name in ("h", "w"))
    bias = data.draw(st.booleans(), "bias")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), "seed"))
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((o, c, 3, 3))
    b = rng.standard_normal(o) if bias else None
    old = parallel.CHUNK_BYTES, parallel.MIN_CHUNKS
    parallel.CHUNK_BYTES, parallel.MIN_CHUNKS = 8 * 9 * c * h * w, 1  # about two images a chunk
    parallel.set_num_threads(2)
    try:
        y, cache = conv2d_forward(x, wt, b, 2, 1)
        dy = rng.standard_normal(y.shape)
        dx, dw, db = conv2d_backward(dy, cache)
    finally:
        parallel.CHUNK_BYTES, parallel.MIN_CHUNKS = old
        parallel.set_num_threads(parallel.available_cores())
    assert cache.path == "phases"
    _assert_matches_torch(x, wt, b, dy, (y, dx, dw, db), stride=2, padding=1)
