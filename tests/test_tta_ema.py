"""Flip test-time augmentation against torch (the mean of two forwards), and
the EMA weights through train, eval, export and predict."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minires.checkpoint import load_checkpoint
from minires.data import normalize
from minires.engine import evaluate, tta_logits
from minires.inference import load_trained, predict_proba
from tests.trained_model_helpers import (random_resnet20, random_torch_resnet20, run_cli,
                                         write_checkpoint)


def _images(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def _torch_flip_tta(images):
    """The reference: torch's ResNet-20 with the same weights, logits of each
    image and of its mirror, averaged."""
    ref = random_torch_resnet20(seed=4)
    x = torch.from_numpy(normalize(images, dtype=np.float64)).double()
    ref.double().eval()
    with torch.no_grad():
        return ((ref(x) + ref(torch.flip(x, dims=[3]))) / 2).numpy()


def test_flip_tta_is_the_mean_of_the_two_views_as_torch_computes_it():
    images, labels = _images()
    model = random_resnet20(seed=4).to(dtype=np.float64)
    want = _torch_flip_tta(images)
    got = tta_logits(model, normalize(images, dtype=np.float64), "flip")
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    plain = tta_logits(model, normalize(images, dtype=np.float64), "none")
    assert not np.allclose(plain, want)  # the mirror changes the answer: the test can fail
    loss, acc = evaluate(model, images, labels, batch_size=10, dtype="float64", tta="flip")
    t = torch.from_numpy(want)
    assert loss == pytest.approx(float(F.cross_entropy(t, torch.from_numpy(labels))), rel=1e-9)
    assert acc == float((want.argmax(1) == labels).mean())


def test_predict_proba_with_flip_tta_is_torchs_softmax_of_the_mean_logits():
    images, _ = _images(8, seed=1)
    model = random_resnet20(seed=4).to(dtype=np.float64)
    want = torch.softmax(torch.from_numpy(_torch_flip_tta(images)), dim=1).numpy()
    got = predict_proba(model, normalize(images, dtype=np.float64), batch_size=3, tta="flip")
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_an_unknown_tta_mode_is_refused():
    with pytest.raises(ValueError, match="tta must be 'none' or 'flip', got 'five'"):
        tta_logits(random_resnet20(), np.zeros((1, 3, 32, 32), np.float32), "five")


# ---------------------------------------------------------------- through the commands

@pytest.fixture
def tiny_cifar(tmp_path):
    from tests.data import python_batches, python_members, write_folder
    batches = python_batches(np.random.default_rng(0), per_batch=(24,) * 5, test_size=40)
    write_folder(str(tmp_path / "data"), python_members(batches))
    return str(tmp_path / "data")


def _train(data, out, *extra):
    code, stdout, err = run_cli(["train", "--model", "resnet20", "--data", data, "--epochs", "2",
                                 "--batch-size", "32", "--lr", "0.05", "--out", out,
                                 "--no-progress", *extra])
    assert code == 0, err
    return stdout


def _eval(ckpt, data, *extra):
    code, stdout, err = run_cli(["eval", "--checkpoint", ckpt, "--data", data, "--json", *extra])
    assert code == 0, err
    return json.loads(stdout)


def test_ema_run_saves_both_weights_and_eval_uses_the_average_with_the_runs_tta(tiny_cifar,
                                                                               tmp_path):
    out = str(tmp_path / "run")
    stdout = _train(tiny_cifar, out, "--ema", "0.9", "--tta", "flip")
    assert "(EMA weights, flip TTA)" in stdout
    ckpt = os.path.join(out, "last.ckpt")
    state = load_checkpoint(ckpt)
    assert state["ema"]["updates"] == 8 and state["ema"]["decay"] == 0.9
    live, avg = state["model"], state["ema"]["module"]
    assert not np.allclose(live["conv1.weight"], avg["conv1.weight"])
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    # by default eval takes the EMA weights and the run's TTA: the trainer's own number
    res = _eval(ckpt, tiny_cifar)
    assert (res["weights"], res["tta"]) == ("ema", "flip")
    assert res["accuracy"] == rows[-1]["test_acc"]
    assert res["loss"] == pytest.approx(rows[-1]["test_loss"], rel=1e-6)
    # --no-ema --tta none: the live weights, one view, as evaluate() gives them
    res = _eval(ckpt, tiny_cifar, "--no-ema", "--tta", "none")
    model, _ = load_trained(ckpt, ema=False)
    from minires.data import load_cifar10
    images, labels, _ = load_cifar10(tiny_cifar, "test")
    assert (res["loss"], res["accuracy"]) == evaluate(model, images, labels)
    # the export holds the EMA weights and says so; predict honours --tta
    exp = str(tmp_path / "r.safetensors")
    code, stdout, err = run_cli(["export", "--checkpoint", ckpt, "--out", exp])
    assert code == 0 and "(the EMA's weights)" in stdout, err
    from minires.convert import load_safetensors
    sd, meta = load_safetensors(exp)
    assert meta["weights"] == "ema" and meta["tta"] == "flip"
    np.testing.assert_array_equal(sd["conv1.weight"], avg["conv1.weight"])
    code, _, err = run_cli(["predict", "--checkpoint", exp, "--no-ema", "x.png"])
    assert code == 2 and "holds the ema weights only" in err and len(err.splitlines()) == 1


def test_ema_asked_of_a_checkpoint_without_it_is_a_one_line_error(tmp_path, tiny_cifar):
    ckpt = write_checkpoint(tmp_path / "plain.ckpt", random_resnet20())
    for cmd in (["eval", "--checkpoint", ckpt, "--data", tiny_cifar, "--ema"],
                ["export", "--checkpoint", ckpt, "--out", tmp_path / "x.safetensors", "--ema"]):
        if cmd[0] == "export":
            pytest.importorskip("safetensors")
        code, _, err = run_cli(cmd)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"--ema: {ckpt} holds no EMA weights" in err


def test_tta_choice_outside_the_list_is_refused_by_every_command(tmp_path):
    for cmd in (["train", "--data", tmp_path, "--tta", "five"],
                ["eval", "--checkpoint", "x", "--tta", "five"]):
        with pytest.raises(SystemExit) as e:
            run_cli(cmd)
        assert e.value.code == 2
