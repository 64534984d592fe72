"""Every layer and block keeps the whole module contract, checked with the
public kit (minires.testing.check_module), and every layer with a torch
twin matches it (check_against_torch).  So the kit is exercised on real
layers in every CI run; tests/test_testing_kit.py shows that each of its
checks catches a layer broken in its way."""
import pytest

from minires.testing import check_against_torch, check_module

from .kit_cases import LAYERS

WITH_TORCH = [name for name, (_, twin, _) in LAYERS.items() if twin is not None]


@pytest.mark.parametrize("name", list(LAYERS))
def test_module_contract(name):
    factory, _, inputs = LAYERS[name]
    check_module(factory, inputs)


# torch warns that it copies the input for an even kernel with padding="same"
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("name", WITH_TORCH)
def test_matches_torch(name):
    factory, twin, inputs = LAYERS[name]
    check_against_torch(factory, twin, inputs)
