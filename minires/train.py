"""The training loop: epochs, evaluation, metrics, checkpoints and resume.

One step, as data flows: the loader thread yields a normalised, augmented
float32 NCHW batch (already on the device); ``logits = model(x)``;
``loss = crit(logits, y)``; ``model.backward(crit.backward())`` fills every
``p.grad``; ``opt.step()``; ``sched.step()``; ``opt.zero_grad()``.
"""
import copy
import json
import math
import os
import time
from dataclasses import dataclass, asdict, field

import numpy as np

from . import backend, models, nn, optim
from . import random as mr_random
from .checkpoint import save_checkpoint, load_checkpoint
from .fileio import atomic_write_bytes
from .grad_mode import no_grad
from .recipes import RECIPES


@dataclass
class TrainConfig:
    model: str = "resnet20"
    data: str = None
    out: str = "runs/resnet20"
    epochs: int = 17
    batch_size: int = 128
    lr: float = 0.2
    schedule: str = "onecycle"          # onecycle | multistep | cosine | constant
    pct_start: float = 0.25             # one-cycle warm-up fraction
    warmup_epochs: float = 0.0          # linear warm-up before cosine
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    no_decay_bn_bias: bool = False      # no weight decay on BN and bias parameters
    label_smoothing: float = 0.1
    augment: bool = True
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    time_budget: float = None           # minutes for the whole run
    max_steps: int = None               # stop (and fit the schedule) after this many steps
    train_subset: int = None            # use only the first N training images
    eval_batch_size: int = 500
    progress: bool = True
    # data-parallel training over MPI (minires.distributed); batch_size is then
    # the GLOBAL batch, split across the ranks
    distributed: bool = False
    sync_bn: bool = False               # batch-norm statistics over all ranks' shards
    dist_timeout: float = 300.0         # seconds a collective waits for a peer before aborting
    fitted: dict = field(default_factory=dict)  # the schedule as fitted (epochs, total steps)

    @classmethod
    def from_recipe(cls, name, **overrides):
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; recipes: {sorted(RECIPES)}")
        kw = dict(RECIPES[name])
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)


NUM_CLASSES = 10  # CIFAR-10


class NonFiniteLoss(RuntimeError):
    pass


def build_model(name, num_classes=10):
    fn = getattr(models, name, None)
    if fn is None or not callable(fn):
        raise ValueError(f"unknown model {name!r}")
    return fn(num_classes=num_classes)


def build_optimizer(model, cfg):
    params = (optim.split_decay_groups(model, cfg.weight_decay) if cfg.no_decay_bn_bias
              else model.parameters())
    return optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                     weight_decay=cfg.weight_decay)


def build_schedule(opt, cfg, total_steps, steps_per_epoch):
    """Schedules step once per iteration."""
    if cfg.schedule == "onecycle":
        return optim.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps,
                                pct_start=cfg.pct_start)
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


def evaluate(model, images, labels, batch_size=500, device="cpu", dtype="float32"):
    """Mean loss and accuracy over a whole split, in eval mode, keeping no caches."""
    from .data import normalize
    crit = nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    with no_grad():
        for i in range(0, len(labels), batch_size):
            x = backend.to_device(normalize(images[i:i + batch_size], dtype=np.dtype(dtype)), device)
            y = backend.to_device(labels[i:i + batch_size], device)
            logits = model(x)
            total_loss += float(crit(logits, y)) * len(y)
            correct += int((logits.argmax(axis=1) == y).sum())
    model.train(was_training)
    n = len(labels)
    return total_loss / n, correct / n


def train_step(model, crit, opt, sched, x, y):
    """One SGD step; returns the loss (a 0-d array on the batch's backend) and logits."""
    logits = model(x)
    loss = crit(logits, y)
    model.backward(crit.backward())
    opt.step()
    sched.step()
    opt.zero_grad()
    return loss, logits


def _probe_step_time(model, cfg, images, labels, steps=8, warmup=2, batch_size=None,
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


def fit_schedule(cfg, steps_per_epoch, n_test, step_time=None, eval_per_image=None):
    """Decide the run's length: epochs and total steps, so that ``--max-steps``
    and ``--time-budget`` (minutes) are honoured.  Saved with the run so that a
    resumed run never refits it."""
    epochs, total = cfg.epochs, cfg.epochs * steps_per_epoch
    if cfg.time_budget is not None:
        # 5% margin for logging, checkpoints and noise
        epoch_s = steps_per_epoch * step_time + n_test * eval_per_image
        fit = int(cfg.time_budget * 60 * 0.95 // epoch_s)
        epochs = max(1, min(epochs, fit))
        total = epochs * steps_per_epoch
    if cfg.max_steps is not None and cfg.max_steps < total:
        total = cfg.max_steps
        epochs = math.ceil(total / steps_per_epoch)
    return {"epochs": epochs, "total_steps": total, "steps_per_epoch": steps_per_epoch,
            "step_time_s": step_time, "eval_s_per_image": eval_per_image}


class Trainer:
    """Runs ``cfg`` into the folder ``cfg.out``: config.json, metrics.jsonl,
    last.ckpt and best.ckpt.

    With ``cfg.distributed``, ``Trainer(cfg)`` builds a
    ``minires.distributed.DistributedTrainer`` (one per MPI rank), which fills
    the hooks below (``_build_model``, ``_make_loader``, ``_train_step``,
    ``_sum_over_ranks``, ``_evaluate`` ...); only its rank 0 is ``is_main``.
    """

    is_main = True  # only the main process writes files, logs and shows progress

    def __new__(cls, cfg=None, *args, **kwargs):
        # so that `Trainer(TrainConfig(distributed=True)).run()` under mpiexec just works
        if cls is Trainer and getattr(cfg, "distributed", False):
            from .distributed.trainer import DistributedTrainer
            cls = DistributedTrainer
        return super().__new__(cls)

    def __init__(self, cfg, train_data=None, test_data=None, log=print):
        self.cfg, self.log = cfg, log
        self.train_data, self.test_data = train_data, test_data
        self.last_path = os.path.join(cfg.out, "last.ckpt")
        self.best_path = os.path.join(cfg.out, "best.ckpt")
        self.metrics_path = os.path.join(cfg.out, "metrics.jsonl")

    def _load_data(self):
        from .data import load_cifar10
        if self.train_data is None:
            self.train_data = load_cifar10(self.cfg.data, split="train")[:2]
        if self.test_data is None:
            self.test_data = load_cifar10(self.cfg.data, split="test")[:2]
        for split, (_, y) in (("train", self.train_data), ("test", self.test_data)):
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
                raise ValueError(f"{split} labels must be class indices in [0, {NUM_CLASSES}), "
                                 f"got the range [{int(y.min())}, {int(y.max())}]")
        if self.cfg.train_subset:
            # a class-balanced, seeded subset (image folders load sorted by class,
            # so the first n images would be one class)
            from .data.subset import balanced_sample
            idx = balanced_sample(self.train_data[1], self.cfg.train_subset, self.cfg.seed)
            self.train_data = (self.train_data[0][idx], self.train_data[1][idx])

    def _setup(self, resume):
        cfg = self.cfg
        self._load_data()
        images, labels = self.train_data
        steps_per_epoch = self._steps_per_epoch(len(labels))
        state = self._load_state() if resume else None
        if state is not None:
            cfg.fitted = state["config"]["fitted"]  # never refit on resume
        mr_random.manual_seed(cfg.seed)
        self.model = self._build_model()
        self.opt = build_optimizer(self.model, cfg)
        # the labels were range-checked once on the host (_load_data), so the loss
        # need not read a flag back from the GPU in every step
        self.crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing,
                                        check_targets=backend.normalize_device(cfg.device) == "cpu")
        if not cfg.fitted:
            st = ev = None
            if cfg.time_budget is not None:
                st, ev = self._probe(images, labels)
            cfg.fitted = fit_schedule(cfg, steps_per_epoch, len(self.test_data[1]), st, ev)
        self.sched = build_schedule(self.opt, cfg, cfg.fitted["total_steps"], steps_per_epoch)
        self.epoch, self.step, self.best_acc, self.history = 0, 0, -1.0, []
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["schedule"])
            mr_random.set_rng_state(state["rng"])
            self.epoch, self.step = state["epoch"], state["step"]
            self.best_acc, self.history = state["best_acc"], state["history"]
            self.log(f"resumed {cfg.out} at epoch {self.epoch}, step {self.step}")
        self._after_setup()
        if not self.is_main:
            return
        os.makedirs(cfg.out, exist_ok=True)
        atomic_write_bytes(os.path.join(cfg.out, "config.json"),
                           json.dumps(asdict(cfg), indent=2).encode())
        # metrics.jsonl mirrors the checkpoint's history (drops epochs a crash lost)
        atomic_write_bytes(self.metrics_path,
                           "".join(json.dumps(m) + "\n" for m in self.history).encode())

    # ---- hooks: one process here; minires.distributed.DistributedTrainer overrides them
    def _steps_per_epoch(self, n):
        return math.ceil(n / self.cfg.batch_size)

    def _load_state(self):
        return load_checkpoint(self.last_path)

    def _build_model(self):
        return build_model(self.cfg.model).to(self.cfg.device, dtype=np.dtype(self.cfg.dtype))

    def _probe(self, images, labels):
        return _probe_step_time(self.model, self.cfg, images, labels)

    def _after_setup(self):
        pass

    def _make_loader(self):
        from .data import BatchLoader
        cfg, (images, labels) = self.cfg, self.train_data
        return BatchLoader(images, labels, cfg.batch_size, shuffle=True, augment=cfg.augment,
                           device=cfg.device, dtype=cfg.dtype)

    def _train_step(self, x, y, i):
        """Step ``i`` of the epoch (looked up at call time: tests patch train_step)."""
        return train_step(self.model, self.crit, self.opt, self.sched, x, y)

    def _sum_over_ranks(self, values):
        """Sums of per-process counters over all processes (here: one)."""
        return list(values)

    def _evaluate(self):
        cfg = self.cfg
        return evaluate(self.model, *self.test_data, cfg.eval_batch_size, cfg.device, cfg.dtype)

    def _agree(self, flag):
        """One decision for all processes (rank 0's, when distributed)."""
        return flag

    def _checkpoint_state(self):
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "schedule": self.sched.state_dict(), "rng": mr_random.get_rng_state(),
                "epoch": self.epoch, "step": self.step, "best_acc": self.best_acc,
                "history": self.history, "config": asdict(self.cfg)}

    def _train_epoch(self):
        from tqdm import tqdm
        cfg = self.cfg
        loader = self._make_loader()
        left = cfg.fitted["total_steps"] - self.step
        n_batches = min(len(loader), left)
        bar = tqdm(total=n_batches, desc=f"epoch {self.epoch + 1}/{cfg.fitted['epochs']}",
                   disable=not (cfg.progress and self.is_main), mininterval=1.0, leave=False)
        loss_sum, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
        pending = []  # losses kept on the device, read every few steps
        self.loss_curve = []  # mean training loss of every 10 steps
        for i, (x, y) in enumerate(loader):
            if i >= n_batches:
                break
            loss, logits = self._train_step(x, y, i)
            self.step += 1
            # loss and hits stay on the device; read every 10 steps (one sync, not ten)
            pending.append((loss * len(y), (logits.argmax(axis=1) == y).sum(), len(y)))
            if len(pending) == 10 or i == n_batches - 1:
                # summed over the ranks when distributed, so every rank sees the same numbers
                window, hits, count = self._sum_over_ranks(
                    [sum(float(v) for v, _, _ in pending), sum(int(c) for _, c, _ in pending),
                     sum(n for _, _, n in pending)])
                correct += int(hits)
                seen += int(count)
                self.loss_curve.append(window / count)
                loss_sum += window
                pending.clear()
                if not math.isfinite(loss_sum):
                    bar.close()
                    raise NonFiniteLoss(
                        f"the training loss became non-finite at epoch {self.epoch + 1}, step "
                        f"{self.step} (lr {self.opt.param_groups[0]['lr']:.4g}); the last good "
                        f"checkpoint is kept at {self.last_path}; try a lower --lr")
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}")
            bar.update(1)
        bar.close()
        return loss_sum / max(seen, 1), correct / max(seen, 1), seen / (time.perf_counter() - t0)

    def run(self, resume=False):
        cfg = self.cfg
        self._setup(resume)
        t_start = time.perf_counter()
        while self.epoch < cfg.fitted["epochs"] and self.step < cfg.fitted["total_steps"]:
            tl, ta, ips = self._train_epoch()
            vl, va = self._evaluate()
            self.epoch += 1
            m = {"epoch": self.epoch, "step": self.step, "lr": self.opt.param_groups[0]["lr"],
                 "train_loss": tl, "train_acc": ta, "test_loss": vl, "test_acc": va,
                 "images_per_s": ips, "elapsed_s": time.perf_counter() - t_start,
                 "loss_curve": self.loss_curve}
            self.history.append(m)
            best = va > self.best_acc
            self.best_acc = max(self.best_acc, va)
            if self.is_main:
                with open(self.metrics_path, "a") as f:
                    f.write(json.dumps(m) + "\n")
                state = self._checkpoint_state()
                save_checkpoint(self.last_path, state)
                if best:
                    save_checkpoint(self.best_path, state)
            self.log(f"epoch {self.epoch}/{cfg.fitted['epochs']}  train loss {tl:.4f} acc "
                     f"{ta:.4f}  test loss {vl:.4f} acc {va:.4f}  {ips:.0f} img/s")
            if self._agree(cfg.time_budget is not None
                           and time.perf_counter() - t_start > cfg.time_budget * 60):
                self.log("time budget reached; stopping")
                break
        return self.history
