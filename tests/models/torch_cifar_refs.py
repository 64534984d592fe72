"""Torch references for training a CIFAR ResNet, and a lockstep runner.

* ``TorchCifarResNet``: the network of akamaster/pytorch_resnet_cifar10 (the
  layout and state_dict names minires.models.cifar follows), option-A shortcut
  as its LambdaLayer: ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))``.
* ``torch_augment``: pad-crop-flip-normalise written in torch ops, to check
  minires's batch augmentation for the same drawn offsets and flips.
* ``TorchTrainStep``: torch's CrossEntropyLoss (label smoothing), SGD
  (momentum, Nesterov, weight decay) and OneCycleLR, stepped in the order
  minires.train.train_step uses.
* ``train_in_lockstep``: minires's trainer pieces (build_model,
  build_optimizer, build_schedule, train_step) and the torch reference, from
  the same initial weights, fed the same batches, step by step.

Shared by tests/test_train_parity.py and benchmarks/bench_train_parity.py.
Nothing here compares minires with itself: every reference number is torch's.
"""
import copy
import time

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F

from tests.helpers import copy_params_to_torch, to_np, torch_tensor

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ---------------------------------------------------------------- the network
class TorchBasicBlock(tnn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        # option A: no parameters, so no state_dict keys (the port's LambdaLayer)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad is None:
            short = x
        else:
            short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)
        return F.relu(out + short)


class TorchCifarResNet(tnn.Module):
    """ResNet-(6n+2) for CIFAR with option-A shortcuts (akamaster's layout)."""

    def __init__(self, depth=20, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.in_planes = 16
        self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.linear = tnn.Linear(64, num_classes)

    def _make_layer(self, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(TorchBasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return tnn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


# ---------------------------------------------------------------- augmentation
def torch_augment(images, offsets, flips, padding=4, mean=None, std=None, dtype="float64"):
    """torchvision's RandomCrop(32, padding) + RandomHorizontalFlip + ToTensor +
    Normalize, for given crop corners (row, col in the padded image) and flips,
    on a uint8 NHWC batch.  Returns a float NCHW torch tensor."""
    from minires.data import CIFAR10_MEAN, CIFAR10_STD
    mean = CIFAR10_MEAN if mean is None else mean
    std = CIFAR10_STD if std is None else std
    td = TORCH_DTYPES[dtype]
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # uint8 NCHW
    h, w = x.shape[2], x.shape[3]
    padded = F.pad(x, (padding, padding, padding, padding))  # black border, as PIL's fill=0
    out = []
    for img, (top, left), flip in zip(padded, offsets, flips):  # a reference: clarity first
        crop = img[:, int(top):int(top) + h, int(left):int(left) + w]
        out.append(crop.flip(2) if flip else crop)
    x = torch.stack(out).to(td) / 255.0
    m = torch.tensor(mean, dtype=td).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=td).view(1, -1, 1, 1)
    return (x - m) / s


# ---------------------------------------------------------------- one training step
class TorchTrainStep:
    """torch's side of one step: loss, backward, SGD step, schedule step, zero_grad."""

    def __init__(self, model, lr, momentum, nesterov, weight_decay, label_smoothing,
                 total_steps, pct_start):
        self.model = model
        self.crit = tnn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                   nesterov=nesterov, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=lr, total_steps=total_steps, pct_start=pct_start)

    def __call__(self, x, y):
        logits = self.model(x)
        loss = self.crit(logits, y)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad()
        return loss.item()


# ---------------------------------------------------------------- lockstep
def _rel_diff(a, ref):
    """max|a - ref| / max|ref| (the scale-relative error assert_close uses)."""
    a, ref = np.asarray(to_np(a), np.float64), np.asarray(to_np(ref), np.float64)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = float(np.max(np.abs(a - ref))) if ref.size else 0.0
    return err / scale if scale > 0 else err


def state_rel_diffs(mr_model, torch_model):
    """{state_dict key: relative difference} for every floating-point entry."""
    ref = torch_model.state_dict()
    out = {}
    for k, v in mr_model.state_dict().items():
        if to_np(v).dtype.kind == "f":
            out[k] = _rel_diff(v, ref[k])
    return out


def perturbed_copy(torch_model, seed):
    """A deep copy whose every parameter is multiplied by 1 +- eps (the dtype's
    machine epsilon, sign at random): one rounding error per weight, the size
    of the differences any two correct implementations start with."""
    twin = copy.deepcopy(torch_model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in twin.parameters():
            sign = torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1
            p.mul_(1 + sign * torch.finfo(p.dtype).eps)
    return twin


def train_in_lockstep(images, labels, steps, batch_size, dtype, seed=0, depth=20,
                      schedule_steps=None, control=False, truth=False, on_step=None,
                      **cfg_overrides):
    """Train minires's CIFAR ResNet and the torch reference side by side.

    minires's side is built as ``minires.train.Trainer`` builds it (from a
    ``TrainConfig``: model, SGD, OneCycle schedule, label-smoothed
    cross-entropy) and steps with ``train_step``.  The torch model starts from
    minires's initial state_dict.  Each step draws one batch (indices, crop
    corners, flips) from ``np.random.default_rng(seed + 1)``, builds the input
    with minires's crop_at/flip_where/normalize, and feeds that same array to
    both.  The same batch built with torch ops (``torch_augment``) is compared
    with it: ``augment_max_abs_diff``.

    The OneCycle schedule spans ``schedule_steps`` (default ``steps``: the
    whole cycle within the run; pass a real run's length to take its first
    steps).  With ``control``, a second torch model starting from weights
    perturbed by one rounding error (``perturbed_copy``) trains alongside:
    ``control_rel_err`` per step says how far two runs that differ only by
    rounding drift apart, a yardstick for minires's error.  With ``truth`` (for
    float32), a float64 torch copy of the initial weights trains on the same
    inputs cast up: ``minires_vs_truth`` and ``torch_vs_truth`` per step say
    which float32 run stays nearer the exact trajectory.

    Returns a dict: ``steps`` (per step: lr and momentum used by each side, both
    losses, their relative error, seconds per side), ``state_rel_diff`` (final
    relative difference per state_dict entry), ``max_weight_rel_diff`` (over
    parameters) and ``max_buffer_rel_diff`` (BN running statistics).
    ``on_step(record)`` is called after each step (for progress output).
    """
    import minires
    from minires import nn
    from minires.data import crop_at, flip_where, normalize
    from minires.train import (TrainConfig, build_model, build_optimizer, build_schedule,
                               train_step)

    cfg = TrainConfig(model=f"resnet{depth}", batch_size=batch_size, dtype=dtype,
                      max_steps=steps, seed=seed, **cfg_overrides)
    minires.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(dtype=np.dtype(dtype))
    model.train()
    opt = build_optimizer(model, cfg)
    schedule_steps = steps if schedule_steps is None else schedule_steps
    sched = build_schedule(opt, cfg, total_steps=schedule_steps, steps_per_epoch=schedule_steps)
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    ref = TorchCifarResNet(depth).to(TORCH_DTYPES[dtype]).train()
    copy_params_to_torch(model, ref)
    recipe = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                  weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing,
                  total_steps=schedule_steps, pct_start=cfg.pct_start)
    ref_step = TorchTrainStep(ref, **recipe)
    ctrl_step = TorchTrainStep(perturbed_copy(ref, seed + 2), **recipe) if control else None
    truth_step = TorchTrainStep(copy.deepcopy(ref).double(), **recipe) if truth else None

    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(len(labels))
    records, aug_diff = [], 0.0
    for t in range(steps):
        idx = order[(t * batch_size) % len(labels):][:batch_size]
        if len(idx) < batch_size:  # wrap around a small data set
            idx = rng.permutation(len(labels))[:batch_size]
        offsets = rng.integers(0, 2 * 4 + 1, size=(batch_size, 2))
        flips = rng.random(batch_size) < 0.5
        batch = images[idx]
        x = normalize(flip_where(crop_at(batch, offsets, 4), flips), dtype=np.dtype(dtype))
        y = np.asarray(labels[idx], dtype=np.int64)
        aug_diff = max(aug_diff, float(np.max(np.abs(
            x.astype(np.float64) - torch_augment(batch, offsets, flips, dtype=dtype).numpy()))))

        lr_mr = opt.param_groups[0]["lr"]
        mom_mr = opt.param_groups[0]["momentum"]
        lr_t = ref_step.opt.param_groups[0]["lr"]
        mom_t = ref_step.opt.param_groups[0]["momentum"]
        t0 = time.perf_counter()
        loss_mr = float(train_step(model, crit, opt, sched, x, y)[0])
        t1 = time.perf_counter()
        loss_t = ref_step(torch_tensor(x), torch.from_numpy(y))
        t2 = time.perf_counter()
        ctrl = {}
        if ctrl_step is not None:
            loss_c = ctrl_step(torch_tensor(x), torch.from_numpy(y))
            ctrl = {"loss_control": loss_c,
                    "control_rel_err": abs(loss_c - loss_t) / abs(loss_t)}
        if truth_step is not None:
            loss_x = truth_step(torch_tensor(x).double(), torch.from_numpy(y))
            ctrl.update(loss_truth=loss_x, minires_vs_truth=abs(loss_mr - loss_x) / abs(loss_x),
                        torch_vs_truth=abs(loss_t - loss_x) / abs(loss_x))
        rec = {"step": t + 1, "lr_minires": lr_mr, "lr_torch": lr_t,
               "momentum_minires": mom_mr, "momentum_torch": mom_t,
               "loss_minires": loss_mr, "loss_torch": loss_t,
               "loss_rel_err": abs(loss_mr - loss_t) / abs(loss_t),
               "seconds_minires": t1 - t0, "seconds_torch": t2 - t1, **ctrl}
        records.append(rec)
        if on_step is not None:
            on_step(rec)

    diffs = state_rel_diffs(model, ref)
    param_names = {k for k, _ in model.named_parameters()}
    weights = {k: v for k, v in diffs.items() if k in param_names}
    buffers = {k: v for k, v in diffs.items() if k not in param_names}
    worst = max(weights, key=weights.get)
    extra = {}
    if ctrl_step is not None:
        cd = state_rel_diffs(ctrl_step.model, ref)
        extra["control_max_weight_rel_diff"] = max(cd[k] for k in weights)
    if truth_step is not None:
        for who, m in (("minires", model), ("torch", ref)):
            d = state_rel_diffs(m, truth_step.model)
            extra[f"{who}_vs_truth_max_weight_rel_diff"] = max(d[k] for k in weights)
    return {**extra, "schedule_steps": schedule_steps,"steps": records, "state_rel_diff": diffs,
            "max_weight_rel_diff": weights[worst], "worst_weight": worst,
            "max_buffer_rel_diff": max(buffers.values()) if buffers else 0.0,
            "augment_max_abs_diff": aug_diff,
            "params_match": [k for k, _ in model.named_parameters()]
            == [k for k, _ in ref.named_parameters()]}
