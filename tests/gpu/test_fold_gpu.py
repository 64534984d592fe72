"""Batch norm folded into the convolutions on the device the model is on: the
same logits as the unfolded eval model, on CuPy as on the CPU (the "cpu"
parameter runs the same code in CI, which has no GPU)."""
import numpy as np
import pytest

import minires
from minires.fold import fold_batchnorm
from minires.models import get
from tests.gpu.common import DEVICES, on
from tests.test_fold import trained_like


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,size", [("resnet20", 32), ("resnet18", 64)])
def test_folded_model_on_the_device_gives_the_same_logits(device, name, size):
    if device == "cuda" and not minires.backend.gpu_available():
        pytest.skip("needs CuPy and a CUDA GPU")
    minires.manual_seed(0)
    model = trained_like(get(name)).to(device)
    x = on(device, np.random.default_rng(0).standard_normal((2, 3, size, size))
           .astype(np.float32))
    folded, n = fold_batchnorm(model)
    assert n > 0
    with minires.no_grad():
        want, got = (minires.to_numpy(m(x)) for m in (model, folded))
    assert minires.backend.get_array_module(folded.parameters()[0].data) is \
        minires.backend.get_array_module(x)  # the folded weights stay on the device
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
