"""minires.summary and the ``minires summary`` command.

Reference figures: torchvision's own for ResNet-18 at 224x224 (11,689,512
parameters, 1,814,073,344 conv+linear MACs); for ResNet-20 the MACs are
computed here from the architecture, independently of minires.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import minires
from minires.cli import main, parse_input_size, CommandError
from minires.models import cifar
from minires.summary import summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESNET18_PARAMS, RESNET18_MACS = 11_689_512, 1_814_073_344
RESNET20_PARAMS = 269_722


def cifar_resnet_macs(depth, num_classes=10, projection=False, size=32):
    """Conv (H_out W_out C_out C_in k^2) and linear MACs of a CIFAR ResNet."""
    n = (depth - 2) // 6

    def conv(hw, c_out, c_in, k):
        return hw * hw * c_out * c_in * k * k

    total = conv(size, 16, 3, 3)  # stem
    c_in, hw = 16, size
    for stage, c in enumerate((16, 32, 64)):
        for b in range(n):
            if stage > 0 and b == 0:
                hw //= 2  # the first block of stages 2 and 3 has stride 2
                if projection:
                    total += conv(hw, c, c_in, 1)
            total += conv(hw, c, c_in, 3) + conv(hw, c, c, 3)
            c_in = c
    return total + 64 * num_classes


def test_resnet20_figures():
    model = cifar.resnet20()
    s = summary(model, (3, 32, 32), verbose=False)
    assert s.total_params == s.trainable_params == RESNET20_PARAMS
    assert s.total_macs == cifar_resnet_macs(20) == 40_551_040
    first = next(r for r in s.rows if r.is_leaf)
    assert (first.name, first.type, first.output_shape, first.params, first.macs) == (
        "conv1", "Conv2d", (1, 16, 32, 32), 432, 32 * 32 * 16 * 3 * 9)
    linear = [r for r in s.rows if r.name == "linear"][0]
    assert linear.output_shape == (1, 10) and linear.macs == 640 and linear.params == 650
    # BatchNorm, ReLU and pooling count no MACs.
    assert all(r.macs == 0 for r in s.rows if r.type not in ("Conv2d", "Linear"))
    # The shared ReLU of a block is called twice: two rows, both at depth 3.
    relu_rows = [r for r in s.rows if r.name == "layer2.0.relu"]
    assert len(relu_rows) == 2 and all(r.depth == 3 for r in relu_rows)
    text = str(s)
    assert "Total params: 269,722" in text and "40,551,040" in text
    assert "Conv2d and Linear" in text  # the footer says what the MACs count


def test_resnet20_option_b_and_batch():
    s = summary(cifar.resnet20(shortcut="B"), (3, 32, 32), batch_size=4, verbose=False)
    assert s.total_params == 272_474
    assert s.total_macs == 4 * cifar_resnet_macs(20, projection=True)
    assert s.rows[0].output_shape == (4, 10)


def test_summary_leaves_the_model_as_it_was(capsys):
    model = cifar.resnet20()
    model.layer1.train(False)  # a mixed state, to see it restored exactly
    before = {k: np.array(v) for k, v in model.state_dict().items()}  # copies
    modes = [m.training for m in model.modules()]
    s = summary(model, (3, 32, 32))
    assert "Total params: 269,722" in capsys.readouterr().out  # verbose prints the table
    assert [m.training for m in model.modules()] == modes
    assert all(not m._caches for m in model.modules())
    assert all("forward" not in m.__dict__ for m in model.modules())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(np.asarray(v), before[k], err_msg=k)
    assert "269,722" in repr(s)
    # The model still trains normally afterwards.
    y = model(np.zeros((2, 3, 32, 32), np.float32))
    assert model.backward(np.ones_like(y)).shape == (2, 3, 32, 32)


def test_resnet18_torchvision_figures():
    from minires.models import resnet18
    s = summary(resnet18(), (3, 224, 224), verbose=False)
    assert s.total_params == RESNET18_PARAMS
    assert s.total_macs == RESNET18_MACS
    assert s.rows[0].output_shape == (1, 1000)


def test_parse_input_size():
    assert parse_input_size(["3", "32", "32"]) == (3, 32, 32)
    assert parse_input_size(["3,224,224"]) == (3, 224, 224)
    with pytest.raises(CommandError, match="three positive integers"):
        parse_input_size(["3", "32"])


def test_cli_in_process(capsys):
    assert main(["summary", "resnet20", "--num-classes", "100", "--input-size", "3,16,16"]) == 0
    out = capsys.readouterr().out
    assert f"Total params: {RESNET20_PARAMS + 90 * 65:,}" in out
    assert f"{cifar_resnet_macs(20, num_classes=100, size=16):,}" in out
    assert main(["summary", "resnet21"]) == 2
    assert "unknown model 'resnet21'" in capsys.readouterr().err


def _run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "minires", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_subprocess_resnet18():
    r = _run_cli("summary", "resnet18")
    assert r.returncode == 0, r.stderr
    assert f"Total params: {RESNET18_PARAMS:,}" in r.stdout
    assert f"Total MACs: {RESNET18_MACS:,}" in r.stdout
    assert "[1, 1000]" in r.stdout


def test_cli_subprocess_resnet20():
    r = _run_cli("summary", "resnet20")
    assert r.returncode == 0, r.stderr
    assert f"Total params: {RESNET20_PARAMS:,}" in r.stdout
    assert f"Total MACs: {cifar_resnet_macs(20):,}" in r.stdout
