"""Helpers for the tests of export/import, predict and eval: ResNet-20s with
every weight and batch-norm statistic drawn at random (in minires or in the
torch reference), checkpoints of them, and commands run in this process."""
import contextlib
import io

import numpy as np
import torch

from minires import models
from minires.checkpoint import save_checkpoint


def _random_entry(key, shape, rng):
    """A value for a state_dict entry: BN scales and variances around 1, the
    rest (weights, biases, means) small and signed; far from a fresh init, so
    a key loaded into the wrong place changes the logits."""
    if key.endswith("num_batches_tracked"):
        return np.array(int(rng.integers(1, 1000)), dtype=np.int64)
    is_bn = key.startswith("bn") or ".bn" in key
    if key.endswith("running_var") or (is_bn and key.endswith("weight")):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    # conv and linear weights at He's scale, so the logits stay O(1)
    scale = np.sqrt(2.0 / np.prod(shape[1:])) if len(shape) >= 2 else 0.1
    if key == "linear.weight":  # the features grow along the 9 residual sums: logits ~ 1
        scale *= 0.02
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def random_resnet20(seed=0, num_classes=10):
    """A minires ResNet-20 in eval mode with every state_dict entry random."""
    rng = np.random.default_rng(seed)
    m = models.resnet20(num_classes=num_classes)
    m.load_state_dict({k: _random_entry(k, v.shape, rng) for k, v in m.state_dict().items()})
    return m.eval()


def random_torch_resnet20(seed=0, num_classes=10):
    """The torch reference ResNet-20 (tests/models/torch_cifar_refs.py) in eval
    mode with every state_dict entry random."""
    from tests.models.torch_cifar_refs import TorchCifarResNet
    rng = np.random.default_rng(seed)
    t = TorchCifarResNet(20, num_classes=num_classes)
    t.load_state_dict({k: torch.from_numpy(_random_entry(k, tuple(v.shape), rng))
                       for k, v in t.state_dict().items()})
    return t.eval()


def write_checkpoint(path, model, arch="resnet20", epoch=3, data=None):
    """A checkpoint as ``minires train`` writes it, as far as eval, predict and
    export read it: the weights, the run's config and the epoch."""
    save_checkpoint(str(path), {"model": model.state_dict(), "epoch": epoch,
                                "config": {"model": arch, "dtype": "float32", "data": data}})
    return str(path)


def run_cli(argv):
    """``minires ARGV`` in this process: (exit status, stdout, stderr)."""
    from minires.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def torch_logits(torch_model, x):
    with torch.no_grad():
        return torch_model(torch.from_numpy(np.ascontiguousarray(x))).numpy()
