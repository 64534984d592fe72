"""Weights in and out as .safetensors: ``minires export``,
``convert.load_pretrained`` and ``minires train --init-from``, each checked
against the torch reference ResNet-20 (tests/models/torch_cifar_refs.py)
reading or writing the file with ``safetensors.torch``."""
import json
import os
import sys

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

import minires
from minires import convert, models
from minires.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from minires.errors import CorruptFileError, MissingExtraError, WeightsMismatchError
from tests.helpers import assert_close
from tests.models.torch_cifar_refs import TorchCifarResNet
from tests.test_cli_errors import _one_line_error, _run
from tests.trained_model_helpers import (random_resnet20, random_torch_resnet20, run_cli,
                                         torch_logits, write_checkpoint)

RTOL = 1e-5  # float32 parity, as the layer tests use


def _batch(seed=1, n=4):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def _minires_logits(model, x):
    with minires.no_grad():
        return minires.to_numpy(model.eval()(x))


def test_export_loads_into_torch_and_gives_the_same_logits(tmp_path):
    model = random_resnet20(seed=3)
    ckpt = write_checkpoint(tmp_path / "best.ckpt", model, epoch=7)
    out = tmp_path / "r20.safetensors"
    code, stdout, stderr = run_cli(["export", "--checkpoint", ckpt, "--out", out])
    assert code == 0, stderr
    assert stdout.startswith(f"wrote {out}: resnet20, 116 tensors, 269,722 parameters")

    sd = safetensors.torch.load_file(str(out))
    ref = TorchCifarResNet(20)
    # torch's own key names and shapes (checked first: load_state_dict would
    # quietly take a 1-d num_batches_tracked for its 0-d one)
    assert {k: tuple(v.shape) for k, v in sd.items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    ref.load_state_dict(sd, strict=True)
    assert sd["bn1.num_batches_tracked"].dtype == torch.int64
    x = _batch()
    assert_close(_minires_logits(model, x), torch_logits(ref.eval(), x), RTOL, "logits")

    with safetensors.safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["architecture"] == "resnet20" and meta["num_classes"] == "10"
    assert meta["minires_version"] == minires.__version__ and meta["format"] == "pt"
    assert json.loads(meta["mean"]) == list(CIFAR10_MEAN)
    assert json.loads(meta["std"]) == list(CIFAR10_STD)
    assert json.loads(meta["classes"]) == list(CIFAR10_CLASSES)
    # written through the atomic-write helper: no temp file is left next to it
    assert sorted(os.listdir(tmp_path)) == ["best.ckpt", "r20.safetensors"]


def test_a_file_written_by_torch_loads_into_minires_with_the_same_logits(tmp_path):
    ref = random_torch_resnet20(seed=4)
    path = tmp_path / "torch.safetensors"
    safetensors.torch.save_file(ref.state_dict(), str(path))  # no metadata at all
    model = convert.load_pretrained(models.resnet20(), path)
    x = _batch(seed=2)
    assert_close(_minires_logits(model, x), torch_logits(ref, x), RTOL, "logits")


def test_load_safetensors_returns_arrays_and_metadata(tmp_path):
    ref = random_torch_resnet20(seed=5)
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(ref.state_dict(), str(path), metadata={"note": "from torch"})
    sd, meta = convert.load_safetensors(path)
    assert meta == {"note": "from torch"}
    assert set(sd) == set(ref.state_dict())
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(sd[k], v.numpy(), err_msg=k, strict=True)


def test_train_init_from_starts_from_the_files_weights(tmp_path, monkeypatch):
    """``minires train --init-from``: the first step sees exactly the weights
    that torch wrote (caught as the patched train_step's input)."""
    from minires import train as train_mod
    from tests.data import CLASSES, image_members, write_folder
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        write_folder(str(tmp_path / "data"), image_members(rng, split, CLASSES, 1, fmt="PNG")[0])
    monkeypatch.setenv("MINIRES_CACHE", str(tmp_path / "cache"))
    ref = random_torch_resnet20(seed=6)
    path = tmp_path / "init.safetensors"
    safetensors.torch.save_file(ref.state_dict(), str(path))
    seen = []
    real_step = train_mod.train_step

    def spy(model, *args):
        if not seen:
            seen.append({k: np.array(minires.to_numpy(v)) for k, v in model.state_dict().items()})
        return real_step(model, *args)

    monkeypatch.setattr(train_mod, "train_step", spy)
    code, stdout, stderr = run_cli(["train", "--init-from", path, "--data", tmp_path / "data",
                                    "--out", tmp_path / "run", "--max-steps", "1",
                                    "--batch-size", "4", "--no-progress"])
    assert code == 0, stderr
    assert f"initial weights from {path}" in stdout
    assert seen, "train_step was never called"
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(seen[0][k], v.numpy(), err_msg=k, strict=True)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["init_from"] == str(path)


# ---------------------------------------------------------------- bad input
def _wrong_head_file(tmp_path):
    """Torch weights of a ResNet-20 with a 100-class head."""
    path = tmp_path / "c100.safetensors"
    safetensors.torch.save_file(random_torch_resnet20(num_classes=100).state_dict(), str(path),
                                metadata={"architecture": "resnet20"})
    return path


def test_mis_shaped_weights_name_the_key_and_both_shapes(tmp_path):
    path = _wrong_head_file(tmp_path)
    with pytest.raises(WeightsMismatchError) as info:
        convert.load_pretrained(models.resnet20(), path)
    msg = str(info.value)
    assert "linear.weight: expected shape (10, 64), got (100, 64)" in msg
    assert "linear.bias: expected shape (10,), got (100,)" in msg
    assert str(path) in msg
    assert isinstance(info.value, KeyError)  # as Module.load_state_dict raises


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = random_torch_resnet20().state_dict()
    sd["extra.weight"] = sd.pop("layer2.1.bn1.running_var")
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(WeightsMismatchError, match=r"missing keys: layer2\.1\.bn1\.running_var"
                                                  r".*unexpected keys: extra\.weight"):
        convert.load_pretrained(models.resnet20(), path)


def test_train_init_from_mis_shaped_file_is_one_line_before_the_data(tmp_path):
    path = _wrong_head_file(tmp_path)
    proc = _run(["train", "--init-from", str(path), "--data", str(tmp_path / "nowhere")], tmp_path)
    line = _one_line_error(proc, "train", str(path), "linear.weight",
                           "expected shape (10, 64), got (100, 64)")
    assert "not found" not in line  # the data was not looked for yet


def test_init_from_with_resume_is_refused(tmp_path):
    code, _, err = run_cli(["train", "--init-from", "w.safetensors", "--resume",
                            "--out", tmp_path / "r"])
    assert code == 2 and "--init-from" in err and "--resume" in err


def test_init_from_a_missing_file(tmp_path):
    code, _, err = run_cli(["train", "--init-from", tmp_path / "none.safetensors",
                            "--data", tmp_path / "nowhere"])
    assert code == 2
    assert err.strip() == f"minires train: error: weights file not found: {tmp_path / 'none.safetensors'}"


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CorruptFileError, match=r"junk\.safetensors is not a readable safetensors"):
        convert.load_pretrained(models.resnet20(), path)


def test_bfloat16_entries_are_refused_with_the_fix(tmp_path):
    path = tmp_path / "bf16.safetensors"
    sd = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v)
          for k, v in random_torch_resnet20().state_dict().items()}
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(CorruptFileError, match=r"'bn1\.bias' is BF16.*float32"):
        convert.load_safetensors(path)


def test_export_errors(tmp_path):
    code, _, err = run_cli(["export", "--checkpoint", tmp_path / "none.ckpt"])
    assert (code, err.strip()) == (2, f"minires export: error: checkpoint not found: "
                                      f"{tmp_path / 'none.ckpt'}")
    code, _, err = run_cli(["export", "--checkpoint", "x.ckpt", "--out", "x.npz"])
    assert code == 2 and "--out must end in .safetensors" in err


def test_default_export_path_is_next_to_the_checkpoint(tmp_path):
    ckpt = write_checkpoint(tmp_path / "last.ckpt", random_resnet20())
    code, _, err = run_cli(["export", "--checkpoint", ckpt])
    assert code == 0, err
    assert (tmp_path / "last.safetensors").exists()


@pytest.mark.parametrize("how", ["command", "library"])
def test_without_the_safetensors_package(tmp_path, how, monkeypatch):
    if how == "command":  # a real process, as a user sees it
        write_checkpoint(tmp_path / "c.ckpt", random_resnet20())
        code = ("import sys; sys.modules['safetensors'] = None  # as if not installed\n"
                "from minires.cli import main; sys.exit(main(sys.argv[1:]))")
        proc = _run(["export", "--checkpoint", "c.ckpt"], tmp_path, code=code)
        _one_line_error(proc, "export", "install the safetensors extra",
                        "pip install -e '.[safetensors]'")
        assert not (tmp_path / "c.safetensors").exists()
    else:
        path = tmp_path / "w.safetensors"
        safetensors.torch.save_file(random_torch_resnet20().state_dict(), str(path))
        monkeypatch.setitem(sys.modules, "safetensors", None)
        monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
        with pytest.raises(MissingExtraError, match=r"minires\[safetensors\]"):
            convert.load_pretrained(models.resnet20(), path)


def test_minires_does_not_import_torch_to_export(tmp_path):
    """safetensors.numpy needs only NumPy: exporting must not pull in torch."""
    write_checkpoint(tmp_path / "c.ckpt", random_resnet20())
    code = ("import sys; from minires.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    proc = _run(["export", "--checkpoint", "c.ckpt"], tmp_path, code=code)
    assert proc.returncode == 0, proc.stderr
