"""One training step, evaluation and the timing probe: the pieces the
trainer and the data-parallel workers both run (``train.py`` drives them
through epochs; ``distributed/`` runs them on each MPI rank).

One step, as data flows: the loader thread yields a normalised, augmented
float32 NCHW batch (already on the device); ``logits = model(x)``;
``loss = crit(logits, y)``; ``model.backward(crit.backward())`` fills every
``p.grad``; ``opt.step()``; ``sched.step()``; ``opt.zero_grad()``.
"""
import copy
import time

import numpy as np

from . import backend, models, nn, optim
from . import random as mr_random
from .grad_mode import no_grad


class NonFiniteLoss(RuntimeError):
    pass


def read_data(cfg, train_data=None, test_data=None):
    """``(train, test)`` pairs of (uint8 NHWC images, labels) for the run:
    the ones given, else read from ``cfg.data``; labels range-checked; with
    ``cfg.train_subset``, a class-balanced seeded sample of the training set
    (image folders load sorted by class, so the first n would be one class)."""
    from .config import NUM_CLASSES
    from .data import load_cifar10
    train_data = train_data or load_cifar10(cfg.data, split="train")[:2]
    test_data = test_data or load_cifar10(cfg.data, split="test")[:2]
    for split, (_, y) in (("train", train_data), ("test", test_data)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
            raise ValueError(f"{split} labels must be class indices in [0, {NUM_CLASSES}), "
                             f"got the range [{int(y.min())}, {int(y.max())}]")
    if cfg.train_subset:
        from .data.subset import balanced_sample
        idx = balanced_sample(train_data[1], cfg.train_subset, cfg.seed)
        train_data = (train_data[0][idx], train_data[1][idx])
    return train_data, test_data


def build_model(name, num_classes=10):
    return models.get(name, num_classes=num_classes)


def build_optimizer(model, cfg):
    params = (optim.split_decay_groups(model, cfg.weight_decay) if cfg.no_decay_bn_bias
              else model.parameters())
    return optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                     weight_decay=cfg.weight_decay)


def build_schedule(opt, cfg, total_steps, steps_per_epoch):
    """Schedules step once per iteration."""
    if cfg.schedule == "onecycle":
        return optim.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps,
                                pct_start=cfg.pct_start, anneal_strategy=cfg.anneal)
    if cfg.schedule == "multistep":
        return optim.MultiStepLR(opt, [int(0.5 * total_steps), int(0.75 * total_steps)], 0.1)
    if cfg.schedule == "cosine":
        warm = int(cfg.warmup_epochs * steps_per_epoch)
        cos = optim.CosineAnnealingLR(opt, max(1, total_steps - warm))
        if warm == 0:
            return cos
        return optim.SequentialLR(opt, [optim.LinearLR(opt, 0.1, 1.0, warm), cos], [warm])
    if cfg.schedule == "constant":
        return optim.MultiStepLR(opt, [], 1.0)
    raise ValueError(f"unknown schedule {cfg.schedule!r}: onecycle, multistep, cosine, constant")


def schedule_steps(cfg, total_steps):
    """``total_steps``, or one fewer where one-cycle would get a warm-up of zero
    length (``pct_start * total_steps == 1``: torch divides by zero there, and
    ``OneCycleLR`` refuses).  A time budget may fit any step count; one fewer
    is always fine (``pct_start * (total_steps - 1) = 1 - pct_start``)."""
    if (cfg.schedule == "onecycle" and total_steps > 1
            and float(cfg.pct_start * total_steps) - 1 == 0):
        return total_steps - 1
    return total_steps


def resume_optimizer(opt, sched, opt_state, sched_state):
    """Continue ``opt`` and ``sched`` (freshly built from the run's settings)
    from a checkpoint: the momentum buffers and the step count come from the
    saved states; every hyper-parameter (peak lr, weight decay, momentum) from
    the settings, which ``--resume-override`` may have changed, so a new
    ``--lr`` under one-cycle goes on along the new peak's curve from this
    step.  Unchanged settings give exactly the saved values."""
    fresh = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in opt.param_groups]
    opt.load_state_dict(opt_state)
    for group, settings in zip(opt.param_groups, fresh):
        group.update(settings)
    sched.last_epoch = sched_state["last_epoch"]  # (the lr is a closed form of the step)
    sched._apply()


def tta_logits(model, x, tta="none"):
    """The model's logits for the batch ``x``; with ``tta="flip"`` the mean of
    the logits of ``x`` and of its left-right mirror (test-time augmentation:
    training flips images at random, so both views are in-distribution)."""
    logits = model(x)
    if tta == "flip":
        xp = backend.get_array_module(x)
        logits = (logits + model(xp.ascontiguousarray(x[..., ::-1]))) * logits.dtype.type(0.5)
    elif tta != "none":
        raise ValueError(f"tta must be 'none' or 'flip', got {tta!r}")
    return logits


def evaluate(model, images, labels, batch_size=500, device="cpu", dtype="float32",
             predictions=None, tta="none", fold=True):
    """Mean loss and accuracy over a whole split, in eval mode, keeping no caches.
    ``predictions``: a host integer array of ``len(labels)`` that receives each
    image's predicted class (``minires eval``'s confusion matrix); copying them
    off the device is the only extra cost, and only when asked.  ``tta``: see
    ``tta_logits``.  ``fold``: run a copy with each batch norm folded into the
    convolution before it (``minires.fold``: the same logits to float32
    rounding, one pass over the activations fewer); ``model`` is not changed."""
    from .data import normalize
    from .fold import fold_batchnorm
    crit = nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()
    run = fold_batchnorm(model)[0] if fold else model
    total_loss, correct = 0.0, 0
    with no_grad():
        for i in range(0, len(labels), batch_size):
            x = backend.to_device(normalize(images[i:i + batch_size], dtype=np.dtype(dtype)), device)
            y = backend.to_device(labels[i:i + batch_size], device)
            logits = tta_logits(run, x, tta)
            total_loss += float(crit(logits, y)) * len(y)
            pred = logits.argmax(axis=1)
            correct += int((pred == y).sum())
            if predictions is not None:
                predictions[i:i + len(y)] = backend.to_numpy(pred)
    model.train(was_training)
    n = len(labels)
    return total_loss / n, correct / n


def recalibrate_ema(ema, train_data, cfg, batches):
    """Recompute the batch-norm statistics of ``ema.module`` (a ``ModelEMA``)
    for its own weights from ``batches`` augmented training batches, drawn
    from a private generator so that the run's random streams are untouched."""
    from .data import BatchLoader
    images, labels = train_data
    rng = np.random.default_rng([cfg.seed, 1])
    loader = BatchLoader(images, labels, cfg.batch_size, shuffle=True, augment=cfg.augment,
                         rng=rng, augment_rng=rng, device=cfg.device, dtype=cfg.dtype)
    optim.recalibrate_batchnorm(ema.module, (x for _, (x, _) in zip(range(batches), loader)))


def train_step(model, crit, opt, sched, x, y):
    """One SGD step; returns the loss (a 0-d array on the batch's backend) and logits."""
    logits = model(x)
    loss = crit(logits, y)
    model.backward(crit.backward())
    opt.step()
    sched.step()
    opt.zero_grad()
    return loss, logits


def probe_step_time(model, cfg, images, labels, steps=8, warmup=2, batch_size=None,
                     step_fn=None):
    """Seconds per training step and per eval image, timed on a throwaway copy so
    neither the weights nor any random stream of the real run change.
    ``batch_size`` and ``step_fn`` (default ``train_step``) let a distributed run
    time its own per-rank step."""
    from .data import normalize
    rng_state = mr_random.get_rng_state()
    probe = copy.deepcopy(model)
    opt = build_optimizer(probe, cfg)
    sched = optim.MultiStepLR(opt, [], 1.0)
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    b = min(batch_size or cfg.batch_size, len(labels))
    step_fn = step_fn or train_step
    x = backend.to_device(normalize(images[:b], dtype=np.dtype(cfg.dtype)), cfg.device)
    y = backend.to_device(labels[:b], cfg.device)
    times = []
    for _ in range(steps + warmup):
        t0 = time.perf_counter()
        float(step_fn(probe, crit, opt, sched, x, y)[0])
        times.append(time.perf_counter() - t0)
    step_time = float(np.median(times[warmup:]))
    probe.eval()
    nb = min(cfg.eval_batch_size, len(labels))
    xe = backend.to_device(normalize(images[:nb], dtype=np.dtype(cfg.dtype)), cfg.device)
    eval_times = []
    with no_grad():
        for _ in range(2):
            t0 = time.perf_counter()
            float(probe(xe).sum())
            eval_times.append(time.perf_counter() - t0)
    eval_per_image = min(eval_times) / nb
    mr_random.set_rng_state(rng_state)
    return step_time, eval_per_image
