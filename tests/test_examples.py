"""The examples in examples/ run, and do what they say."""
import importlib.util
import os

import numpy as np

from tests.data import tiny_cifar_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples",
                                                                     f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_cifar_loop_steps_and_evaluates(tmp_path, capsys):
    from minires.models import resnet20
    import minires
    data = tiny_cifar_folder(tmp_path / "data", per_batch=16, test_size=20)
    model, accuracy = load("train_cifar").train(data, epochs=2, max_steps=3, batch_size=16,
                                                log_every=1)
    out = capsys.readouterr().out.splitlines()
    assert out == ["step 1/3: training loss " + out[0].split()[-1],
                   "step 2/3: training loss " + out[1].split()[-1],
                   "step 3/3: training loss " + out[2].split()[-1],
                   f"epoch 1: test accuracy {100 * accuracy:.2f}%"]
    assert 0.0 <= accuracy <= 1.0
    minires.manual_seed(0)
    init = resnet20().state_dict()  # the loop's model before its 3 steps
    assert not np.array_equal(model.state_dict()["conv1.weight"], init["conv1.weight"])


def test_custom_layer_passes_the_kit_and_matches_torch(capsys):
    load("custom_layer").check()
    out = capsys.readouterr().out
    assert "check_module passed" in out and "matches torch.nn.SiLU" in out


def test_custom_layer_check_catches_a_wrong_backward(monkeypatch):
    import pytest
    example = load("custom_layer")
    monkeypatch.setattr(example, "silu_backward", lambda dy, cache: dy * cache[1])  # drops a term
    with pytest.raises(AssertionError, match="gradcheck"):
        example.check()


def test_skip_connection_prints_the_fork(capsys):
    dX, d_skip, d_residual, errors = load("skip_connection").fork()
    np.testing.assert_allclose(dX, d_skip + d_residual)
    assert max(errors.values()) < 1e-6  # the block's backward against finite differences
    assert np.abs(d_residual).max() > 0 and np.abs(d_skip).max() > 0
    out = capsys.readouterr().out
    assert "the gradient at the addition" in out and "gradcheck: worst" in out
