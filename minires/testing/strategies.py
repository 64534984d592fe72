"""Hypothesis strategies for testing layers: shapes, kink-free arrays, valid
convolution and pooling configurations, and upstream gradients.

A *case* is what ``check_module`` and ``check_against_torch`` draw: either an
input array, or a pair ``(kwargs, x)`` whose ``kwargs`` build the module
(``factory(**kwargs)``) that takes ``x``.  ``cases(conv_configs())`` turns a
configuration strategy into such pairs.
"""
import numpy as np
from hypothesis import assume, strategies as st
from hypothesis.extra import numpy as hnp

# Inputs lie on a grid of spacing SCALE / levels, offset by half a step: no value
# is 0 (ReLU's kink) and no two are equal (max-pooling's tie), and each pair is
# at least one step apart -- far more than gradcheck's eps of 1e-6, so a
# central difference never crosses a kink.
SCALE = 2.0


def shapes(min_dims=1, max_dims=4, min_side=1, max_side=5):
    """Array shapes: ``min_dims``..``max_dims`` axes of ``min_side``..``max_side``."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def _grid_elements(levels, dtype):
    step = SCALE / levels
    return st.integers(-levels, levels - 1).map(lambda i: dtype.type((i + 0.5) * step))


def arrays(shape, dtype=np.float64, elements=None, margin=None, kinks=(0.0,)):
    """Arrays whose values stay ``margin`` away from each of ``kinks`` and from
    each other, so finite differences never straddle ReLU's kink at 0 or swap
    the winner of a max-pool window.

    By default values lie in (-2, 2) on a grid at least ``margin`` apart
    (default: 2 / (4 * size + 8), at least 1e-3 for arrays up to ~500 values).
    Pass ``elements`` (a hypothesis strategy of floats) to draw your own; draws
    closer than ``margin`` to each other (or half of it to a kink) are then
    rejected, one element at a time.
    ``kinks`` names the non-differentiable points of your layer (LeakyReLU: 0;
    a hard tanh: -1 and 1).  ``shape`` may be a tuple or a strategy of tuples.
    """
    dtype = np.dtype(dtype)
    if not isinstance(shape, st.SearchStrategy):
        _check_room(int(np.prod(shape)), margin, elements)  # now, not at the first draw
        shape = st.just(tuple(shape))

    @st.composite
    def draw_array(draw):
        shp = draw(shape)
        size = int(np.prod(shp))
        levels = 2 * size + 4  # 2 * levels grid points: room for size distinct values
        if margin is None:
            gap = SCALE / (2 * levels)  # half a grid step
        else:
            gap = margin
            levels = min(levels, int(SCALE / margin))  # a grid step of at least margin
            _check_room(size, margin, elements)
        if elements is None:
            # Grid points sit half a step off the multiples of the step, so 0
            # (and +-1, the step dividing 1) is half a step away from every value.
            x = draw(hnp.arrays(dtype, shp, elements=_grid_elements(levels, dtype), unique=True))
            for k in kinks:  # other kinks may fall anywhere: reject the rare close draw
                assume(x.size == 0 or np.abs(x.astype(np.float64) - k).min() >= gap / 2)
        else:
            # One element at a time, each filtered against those drawn before:
            # rejecting whole arrays would discard nearly every draw.
            values = []
            for _ in range(size):
                ok = (lambda v, before=tuple(values): np.isfinite(v)
                      and all(abs(float(v) - u) >= gap for u in before)
                      and all(abs(float(v) - k) >= gap / 2 for k in kinks))
                values.append(float(draw(elements.map(dtype.type).filter(ok))))
            x = np.array(values, dtype=dtype).reshape(shp)
        return x

    strategy = draw_array()
    # hypothesis shows this strategy as "draw_array()" whatever the shape: say
    # what it draws, for the example database's key (runner.database_key)
    strategy.minires_description = (f"arrays({shape!r}, {dtype}, elements={elements!r}, "
                                    f"margin={margin!r}, kinks={tuple(kinks)!r})")
    return strategy


def _check_room(size, margin, elements):
    if margin is not None and elements is None and 2 * int(SCALE / margin) < size:
        raise ValueError(f"arrays: {size} values cannot lie {margin:g} apart in "
                         f"(-{SCALE:g}, {SCALE:g}); pass a smaller margin, or "
                         "elements= with a wider range")


def upstream_gradients(shape, dtype=np.float64):
    """Random, non-uniform upstream gradients dL/dy: standard normal values from
    a drawn seed.  (An all-ones gradient proves nothing for batch norm, whose
    dx then vanishes; so does one that hypothesis builds in step with the
    input, such as both counting up the same grid: then dL/dy lies in the span
    of (1, x_hat) and batch norm's dx cancels to rounding noise.  Independent
    normal draws avoid both.)"""
    return _normal_from_seed(tuple(shape), np.dtype(dtype))


@st.composite
def _normal_from_seed(draw, shape, dtype):
    # composite, not .map: a failing example then shows the array, not a lambda
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _output_size(size, kernel, stride, padding, dilation, ceil_mode=False):
    """torch's formula for conv and pool output sizes (pooling's ceil_mode
    rule: the last window must start inside the input or its left padding)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


@st.composite
def conv_configs(draw, input_size=None, max_channels=4, max_kernel=3, max_batch=2,
                 max_groups=2, max_dilation=2):
    """``(kwargs, input_shape)`` for ``Conv2d(**kwargs)`` on an NCHW input of
    ``input_shape``: only combinations torch accepts -- channels divisible by
    groups, ``padding="same"`` with stride 1 only, and a dilated kernel that
    fits the padded input.  ``input_size=(H, W)`` fixes the image size."""
    groups = draw(st.integers(1, max_groups))
    per_group = max(1, max_channels // groups)
    cin = groups * draw(st.integers(1, per_group))
    cout = groups * draw(st.integers(1, per_group))
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    dilation = (draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation)))
    padding = draw(st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2)),
                             st.just("same"), st.just("valid")))
    stride = 1 if padding == "same" else draw(st.one_of(
        st.integers(1, 2), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    extent = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]  # the dilated kernel
    if padding == "same":
        need = [1, 1]  # padded to keep the size: any image fits
    else:
        pads = (0, 0) if padding == "valid" else (
            (padding, padding) if isinstance(padding, int) else padding)
        need = [max(1, extent[i] - 2 * pads[i]) for i in range(2)]
    if input_size is None:
        hw = tuple(need[i] + draw(st.integers(0, 3)) for i in range(2))
    else:
        hw = tuple(input_size)
        assume(all(hw[i] >= need[i] for i in range(2)))
    kwargs = dict(in_channels=cin, out_channels=cout, kernel_size=kernel, stride=stride,
                  padding=padding, dilation=dilation, groups=groups, bias=draw(st.booleans()))
    return kwargs, (draw(st.integers(1, max_batch)), cin) + hw


def pool_configs(kind="max", input_size=None, max_kernel=3, max_channels=3, max_batch=2):
    """``(kwargs, input_shape)`` for ``MaxPool2d(**kwargs)`` (``kind="max"``,
    with dilation) or ``AvgPool2d(**kwargs)`` (``kind="avg"``, with
    ``count_include_pad``): padding at most half the kernel and at least one
    output per axis, as torch requires."""
    if kind not in ("max", "avg"):
        raise ValueError(f"pool_configs: kind must be 'max' or 'avg', got {kind!r}")
    return _pool_configs(kind, input_size, max_kernel, max_channels, max_batch)


@st.composite
def _pool_configs(draw, kind, input_size, max_kernel, max_channels, max_batch):
    k = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if kind == "max" else (1, 1)
    ceil_mode = draw(st.booleans())
    if input_size is None:
        hw = tuple(max(1, d[i] * (k[i] - 1) + 1 - 2 * p[i]) + draw(st.integers(0, 4))
                   for i in range(2))
    else:
        hw = tuple(input_size)
    assume(all(_output_size(hw[i], k[i], s[i], p[i], d[i], ceil_mode) >= 1 for i in range(2)))
    kwargs = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil_mode)
    if kind == "max":
        kwargs["dilation"] = d
        # A dilated window lying wholly in the padding has no input to take the
        # max of (torch returns -inf); draw only windows that touch the input.
        assume(all(_windows_touch_input(hw[i], k[i], s[i], p[i], d[i], ceil_mode)
                   for i in range(2)))
    else:
        kwargs["count_include_pad"] = draw(st.booleans())
    shape = (draw(st.integers(1, max_batch)), draw(st.integers(1, max_channels))) + hw
    return kwargs, shape


def _windows_touch_input(size, k, s, p, d, ceil_mode):
    n = _output_size(size, k, s, p, d, ceil_mode)
    for o in range(n):
        taps = [o * s - p + j * d for j in range(k)]
        if not any(0 <= t < size for t in taps):
            return False
    return True


@st.composite
def cases(draw, configs, dtype=np.float64, **array_kwargs):
    """Turn a strategy of ``(kwargs, input_shape)`` into ``(kwargs, x)`` cases,
    with ``x`` drawn by ``arrays`` (kink-free)."""
    kwargs, shape = draw(configs)
    return kwargs, draw(arrays(shape, dtype, **array_kwargs))
