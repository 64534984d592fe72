"""minires.testing on CuPy arrays: check_module keeps every check on the GPU
(the dtype_and_device check then demands CuPy outputs and gradients), and
check_against_torch copies GPU weights to the host for torch."""
import pytest

from minires import backend
from minires.testing import check_against_torch, check_module
from tests.nn.kit_cases import LAYERS

pytestmark = pytest.mark.gpu

ON_GPU = ["Linear", "Conv2d", "BatchNorm2d", "MaxPool2d", "ResBlockConv", "resnet.Bottleneck"]


def _on_gpu(strategy):
    def move(case):
        if isinstance(case, tuple):
            return case[0], backend.to_device(case[1], "cuda")
        return backend.to_device(case, "cuda")
    return strategy.map(move)


@pytest.mark.parametrize("name", ON_GPU)
def test_module_contract_on_the_gpu(name):
    factory, _, inputs = LAYERS[name]
    check_module(factory, _on_gpu(inputs), max_examples=5)


@pytest.mark.parametrize("name", ["Conv2d", "BatchNorm2d"])
def test_against_torch_from_the_gpu(name):
    factory, twin, inputs = LAYERS[name]
    check_against_torch(factory, twin, _on_gpu(inputs), max_examples=5)
