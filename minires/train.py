"""The training loop: epochs, evaluation, metrics, checkpoints and resume.

One step (``engine.train_step``), as data flows: the loader thread yields a
normalised, augmented float32 NCHW batch (already on the device);
``logits = model(x)``; ``loss = crit(logits, y)``;
``model.backward(crit.backward())`` fills every ``p.grad``; ``opt.step()``;
``sched.step()``; ``opt.zero_grad()``.

The one ``Trainer`` is given a *workers* strategy: how a step runs across
the workers of the run.  ``OneProcess`` (below) is one process on all its
cores; ``minires.distributed.MPIRanks`` is one replica per MPI rank.  The
strategy loads the data and the checkpoint, builds the model and the
loader, runs a step, sums counters over the workers and agrees on a value;
the Trainer does the rest the same way for both.
"""
import json
import math
import os
import time
from dataclasses import asdict

import numpy as np

from . import backend, nn
from . import random as mr_random
from .checkpoint import save_checkpoint, load_checkpoint
from .engine import (NonFiniteLoss, build_model, build_optimizer, build_schedule, evaluate,
                     probe_step_time, train_step)
from .config import NUM_CLASSES, SCHEDULES, TrainConfig  # noqa: F401  (minires.train's names)
from .fileio import atomic_write_bytes


BUDGET_MARGIN = 0.95  # of the time left: logging, checkpoints and noise


def fit_schedule(cfg, steps_per_epoch, n_test, step_time=None, eval_per_image=None,
                 spent_s=0.0):
    """Decide the run's length: epochs and total steps, so that ``--max-steps``
    and ``--time-budget`` (minutes) are honoured.  ``spent_s``: seconds the run
    has used already (loading the data, the probe): the budget covers the
    whole run.  Saved with the run so that a resumed run never refits it at
    the start (only when it falls behind, see ``Trainer._refit``)."""
    epochs, total = cfg.epochs, cfg.epochs * steps_per_epoch
    if cfg.time_budget is not None:
        epoch_s = steps_per_epoch * step_time + n_test * eval_per_image
        fit = int((cfg.time_budget * 60 - spent_s) * BUDGET_MARGIN // epoch_s)
        epochs = max(1, min(epochs, fit))
        total = epochs * steps_per_epoch
    if cfg.max_steps is not None and cfg.max_steps < total:
        total = cfg.max_steps
        epochs = math.ceil(total / steps_per_epoch)
    return {"epochs": epochs, "total_steps": total, "steps_per_epoch": steps_per_epoch,
            "step_time_s": step_time, "eval_s_per_image": eval_per_image, "spent_s": spent_s}


class OneProcess:
    """The workers strategy of a run in one process (its ops use every core).

    Each method gets the Trainer; ``minires.distributed.MPIRanks`` has the
    same methods for one replica per MPI rank."""

    is_main = True  # only the main worker writes files, logs and shows progress

    def load_data(self, trainer):
        trainer._read_data()

    def steps_per_epoch(self, trainer, n):
        return math.ceil(n / trainer.cfg.batch_size)

    def load_state(self, trainer):
        return load_checkpoint(trainer.last_path)

    def build_model(self, trainer):
        cfg = trainer.cfg
        return build_model(cfg.model).to(cfg.device, dtype=np.dtype(cfg.dtype))

    def probe(self, trainer, images, labels):
        return probe_step_time(trainer.model, trainer.cfg, images, labels)

    def after_setup(self, trainer):
        pass

    def make_loader(self, trainer):
        from .data import BatchLoader
        cfg, (images, labels) = trainer.cfg, trainer.train_data
        return BatchLoader(images, labels, cfg.batch_size, shuffle=True, augment=cfg.augment,
                           device=cfg.device, dtype=cfg.dtype)

    def train_step(self, trainer, x, y, i):
        """Step ``i`` of the epoch (``train_step`` looked up at call time: tests
        and benchmarks patch it)."""
        return train_step(trainer.model, trainer.crit, trainer.opt, trainer.sched, x, y)

    def sum(self, values):
        """Sums of per-worker counters over all workers (here: one)."""
        return list(values)

    def agree(self, value):
        """One value for all workers (the main worker's)."""
        return value

    def evaluate(self, trainer):
        cfg = trainer.cfg
        return evaluate(trainer.model, *trainer.test_data, cfg.eval_batch_size, cfg.device,
                        cfg.dtype)

    def run(self, body):
        return body()


class Trainer:
    """Runs ``cfg`` into the folder ``cfg.out``: config.json, metrics.jsonl,
    last.ckpt and best.ckpt.

    ``workers``: how a step runs across workers; by default ``OneProcess()``,
    or ``minires.distributed.MPIRanks(cfg)`` when ``cfg.distributed`` (so
    that ``Trainer(TrainConfig(distributed=True)).run()`` under mpiexec just
    works).  Only the main worker writes files and logs.

    ``callbacks``: observers of the run (e.g. ``minires.tensorboard.
    TensorBoardLogger``), called on every worker (each checks ``is_main``
    before it writes) through whichever of these methods they have:
    ``on_run_start(trainer)`` after setup (and resume), ``on_log_step(
    trainer, record)`` every time the step counters are read (every 10
    steps; record: step, lr, train_loss, train_acc, images_per_s of those
    steps), ``on_epoch_end(trainer, metrics)`` after the epoch's checkpoint
    (metrics: its row of metrics.jsonl) and ``on_run_end(trainer)``, also
    when the run fails.
    """

    def __init__(self, cfg, train_data=None, test_data=None, log=print, workers=None,
                 callbacks=()):
        cfg.validate()
        if workers is None:
            if cfg.distributed:
                from .distributed.trainer import MPIRanks
                workers = MPIRanks(cfg)
            else:
                workers = OneProcess()
        self.workers = workers
        self.callbacks = list(callbacks)
        self.cfg, self.log = cfg, (log if workers.is_main else _silent)
        self.train_data, self.test_data = train_data, test_data
        self.last_path = os.path.join(cfg.out, "last.ckpt")
        self.best_path = os.path.join(cfg.out, "best.ckpt")
        self.metrics_path = os.path.join(cfg.out, "metrics.jsonl")

    def _notify(self, event, *args):
        for cb in self.callbacks:
            method = getattr(cb, event, None)
            if method is not None:
                method(self, *args)

    @property
    def is_main(self):
        return self.workers.is_main

    def _read_data(self):
        """Read the data set in this process (the workers decide who reads when)."""
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
        cfg, workers = self.cfg, self.workers
        workers.load_data(self)
        images, labels = self.train_data
        steps_per_epoch = workers.steps_per_epoch(self, len(labels))
        state = workers.load_state(self) if resume else None
        if state is not None:
            cfg.fitted = state["config"]["fitted"]  # never refit on resume
        mr_random.manual_seed(cfg.seed)
        self.model = workers.build_model(self)
        if state is None and cfg.init_from and self.is_main:
            # a new run from given weights (fine-tuning); under MPI only rank 0
            # reads the file and after_setup sends its weights to the others
            from .convert import load_pretrained
            load_pretrained(self.model, cfg.init_from)
            self.log(f"initial weights from {cfg.init_from}")
        self.opt = build_optimizer(self.model, cfg)
        # the labels were range-checked once on the host (_read_data), so the loss
        # need not read a flag back from the GPU in every step
        self.crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing,
                                        check_targets=backend.normalize_device(cfg.device) == "cpu")
        if not cfg.fitted:
            st = ev = None
            if cfg.time_budget is not None:
                st, ev = workers.probe(self, images, labels)
            cfg.fitted = fit_schedule(cfg, steps_per_epoch, len(self.test_data[1]), st, ev,
                                      spent_s=time.perf_counter() - self._t_run)
            self._log_plan()
        self.epoch, self.step, self.best_acc, self.history = 0, 0, -1.0, []
        self.sched, total = self._schedule(cfg.fitted["total_steps"])
        if total != cfg.fitted["total_steps"]:
            cfg.fitted = {**cfg.fitted, "total_steps": total,
                          "epochs": math.ceil(total / steps_per_epoch)}
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["schedule"])
            mr_random.set_rng_state(state["rng"])
            self.epoch, self.step = state["epoch"], state["step"]
            self.best_acc, self.history = state["best_acc"], state["history"]
            self.log(f"resumed {cfg.out} at epoch {self.epoch}, step {self.step}")
        workers.after_setup(self)
        if not self.is_main:
            return
        os.makedirs(cfg.out, exist_ok=True)
        atomic_write_bytes(os.path.join(cfg.out, "config.json"),
                           json.dumps(asdict(cfg), indent=2).encode())
        # metrics.jsonl mirrors the checkpoint's history (drops epochs a crash lost)
        atomic_write_bytes(self.metrics_path,
                           "".join(json.dumps(m) + "\n" for m in self.history).encode())

    def _evaluate(self):
        return self.workers.evaluate(self)

    def _checkpoint_state(self):
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "schedule": self.sched.state_dict(), "rng": mr_random.get_rng_state(),
                "epoch": self.epoch, "step": self.step, "best_acc": self.best_acc,
                "history": self.history, "config": asdict(self.cfg)}

    def _train_epoch(self):
        from tqdm import tqdm
        cfg = self.cfg
        loader = self.workers.make_loader(self)
        left = cfg.fitted["total_steps"] - self.step
        n_batches = min(len(loader), left)
        bar = tqdm(total=n_batches, desc=f"epoch {self.epoch + 1}/{cfg.fitted['epochs']}",
                   disable=not (cfg.progress and self.is_main), mininterval=1.0, leave=False)
        loss_sum, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
        t_window = t0
        pending = []  # losses kept on the device, read every few steps
        self.loss_curve = []  # mean training loss of every 10 steps
        for i, (x, y) in enumerate(loader):
            if i >= n_batches:
                break
            loss, logits = self.workers.train_step(self, x, y, i)
            self.step += 1
            # loss and hits stay on the device; read every 10 steps (one sync, not ten)
            pending.append((loss * len(y), (logits.argmax(axis=1) == y).sum(), len(y)))
            if len(pending) == 10 or i == n_batches - 1:
                # summed over the ranks when distributed, so every rank sees the same numbers
                window, hits, count = self.workers.sum(
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
                now = time.perf_counter()
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen / (now - t0):.0f}")
                if self.callbacks:
                    self._notify("on_log_step", {
                        "step": self.step, "lr": self.opt.param_groups[0]["lr"],
                        "train_loss": window / count, "train_acc": hits / count,
                        "images_per_s": count / (now - t_window)})
                t_window = now
            bar.update(1)
        bar.close()
        return loss_sum / max(seen, 1), correct / max(seen, 1), seen / (time.perf_counter() - t0)

    def _log_plan(self):
        f, cfg = self.cfg.fitted, self.cfg
        line = (f"plan: {f['epochs']} epochs, {f['total_steps']} steps "
                f"({f['steps_per_epoch']} per epoch)")
        if cfg.time_budget is not None:
            line += (f" to fit --time-budget {cfg.time_budget:g} min: the probe measured "
                     f"{1000 * f['step_time_s']:.0f} ms per step and "
                     f"{1000 * f['eval_s_per_image']:.2f} ms per test image; loading and "
                     f"the probe took {time.perf_counter() - self._t_run:.0f} s")
        self.log(line)

    def _schedule(self, total):
        """The schedule over ``total`` steps, and that total.  A budget can fit
        a step count that gives one-cycle a warm-up of zero length (torch
        divides by zero there): then one step fewer."""
        cfg, per_epoch = self.cfg, self.cfg.fitted["steps_per_epoch"]
        while True:
            try:
                return build_schedule(self.opt, cfg, total, per_epoch), total
            except ValueError:
                if total <= max(1, getattr(self, "step", 0) + 1):
                    raise
                total -= 1

    def _epochs_that_fit(self, epoch_s):
        """Whole epochs of ``epoch_s`` seconds left in the time budget."""
        left = self.cfg.time_budget * 60 - (time.perf_counter() - self._t_run)
        return max(0, int(left * BUDGET_MARGIN // epoch_s))

    def _refit(self, epoch_s):
        """Behind the probe's pace (a loaded machine): shorten the remaining
        schedule so that it still ends (lr annealed) within the budget.
        Returns False when not even one more epoch fits."""
        cfg, f = self.cfg, self.cfg.fitted
        fits = self.workers.agree(self._epochs_that_fit(epoch_s))
        planned = f["epochs"] - self.epoch
        if fits >= planned:
            return True
        if fits == 0:
            self.log(f"time budget: an epoch now takes {epoch_s:.0f} s and no other fits in "
                     f"--time-budget {cfg.time_budget:g} min; stopping at epoch {self.epoch}")
            return False
        epochs = self.epoch + fits
        self.sched, total = self._schedule(min(f["total_steps"], epochs * f["steps_per_epoch"]))
        self.sched.last_epoch = self.step  # the same closed form, squeezed into fewer steps
        self.sched._apply()
        cfg.fitted = {**f, "epochs": epochs, "total_steps": total,
                      "refitted": f.get("refitted", []) + [
                          {"at_epoch": self.epoch, "epoch_s": round(epoch_s, 3),
                           "epochs_before": f["epochs"]}]}
        self.log(f"time budget: behind the probe's pace ({epoch_s:.0f} s per epoch); the "
                 f"schedule now ends after {epochs} epochs ({total} steps)")
        if self.is_main:  # the run folder says what the budget bought, refits included
            atomic_write_bytes(os.path.join(cfg.out, "config.json"),
                               json.dumps(asdict(cfg), indent=2).encode())
        return True

    def run(self, resume=False):
        """Train (or continue, with ``resume``) to the end of the plan; returns
        the per-epoch metrics."""
        return self.workers.run(lambda: self._run(resume))

    def _run(self, resume):
        self._t_run = time.perf_counter()  # the budget counts loading and the probe too
        self._setup(resume)
        try:
            self._notify("on_run_start")
            return self._epochs()
        finally:
            self._notify("on_run_end")

    def _epochs(self):
        cfg = self.cfg
        t_start = time.perf_counter()
        while self.epoch < cfg.fitted["epochs"] and self.step < cfg.fitted["total_steps"]:
            t_epoch = time.perf_counter()
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
                # best before last: killed between the two writes, the run resumes
                # from the previous last.ckpt and redoes this epoch, so best.ckpt
                # is never left behind the epoch it should hold
                if best:
                    save_checkpoint(self.best_path, state)
                save_checkpoint(self.last_path, state)
            self.log(f"epoch {self.epoch}/{cfg.fitted['epochs']}  train loss {tl:.4f} acc "
                     f"{ta:.4f}  test loss {vl:.4f} acc {va:.4f}  {ips:.0f} img/s")
            self._notify("on_epoch_end", m)
            if cfg.time_budget is not None and self.epoch < cfg.fitted["epochs"]:
                if not self._refit(time.perf_counter() - t_epoch):
                    break
        return self.history


def _silent(*args, **kwargs):
    pass
