"""The training loop: epochs, evaluation, metrics, checkpoints and resume.

An epoch is loop -> step (``engine.train_step``, where one step's data flow
is written out) -> meter (``epoch_meter.EpochMeter``: losses, accuracy,
progress, callbacks).

The one ``Trainer`` is given a *workers* strategy: how a step runs across
the workers of the run.  ``OneProcess`` (``minires/workers.py``) is one
process on all its cores; ``minires.distributed.MPIRanks`` is one replica per MPI rank.  The
strategy loads the data and the checkpoint, builds the model and the
loader, runs a step, sums counters over the workers and agrees on a value;
the Trainer does the rest the same way for both.

Ctrl-C and SIGTERM finish the step and save ``last.ckpt`` with the position
inside the epoch (``minires.interrupts``, ``minires.epoch_position``), as
``--checkpoint-every`` does on a clock; ``--resume`` goes on at the next step.
"""
import json
import math
import os
import signal
import time
from dataclasses import asdict

from . import backend, nn, parallel
from . import random as mr_random
from .checkpoint import save_checkpoint
from .optim import ModelEMA
from .engine import (build_optimizer, build_schedule, read_data, recalibrate_ema,
                     resume_optimizer, schedule_steps)
# looked up at call time by Trainer.train_step and evaluate_on: tests patch them here
from .engine import evaluate, train_step
from .engine import NonFiniteLoss, build_model, probe_step_time  # noqa: F401  (minires.train's names)
from .config import NUM_CLASSES, SCHEDULES, TrainConfig  # noqa: F401  (minires.train's names)
from .epoch_meter import EpochMeter
from .epoch_position import EpochPosition
from .fileio import atomic_write_bytes
from .interrupts import Interrupted, StopRequests
from .workers import OneProcess  # noqa: F401  (minires.train's name)
from . import budget
from .budget import fit_schedule  # noqa: F401  (minires.train's name)


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

    ``clock``: the time source of ``--time-budget`` (tests give a fake one);
    ``started_at``: the ``clock`` time the budget counts from (the command
    passes its process's start; by default, when ``run`` is called).
    """

    def __init__(self, cfg, train_data=None, test_data=None, log=print, workers=None,
                 callbacks=(), clock=time.perf_counter, started_at=None):
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
        self.clock, self._started_at = clock, started_at
        self.ema = None
        self.last_path = os.path.join(cfg.out, "last.ckpt")
        self.best_path = os.path.join(cfg.out, "best.ckpt")
        self.metrics_path = os.path.join(cfg.out, "metrics.jsonl")

    def notify(self, event, *args):
        """Call ``event`` on every callback that has it."""
        for cb in self.callbacks:
            method = getattr(cb, event, None)
            if method is not None:
                method(self, *args)

    @property
    def is_main(self):
        return self.workers.is_main

    @property
    def eval_model(self):
        """What evaluation (and best.ckpt's accuracy) uses: the EMA's weights
        with ``--ema``, else the live model."""
        return self.ema.module if self.ema is not None else self.model

    def read_data(self):
        """Read the data set in this process (the workers decide who reads when)."""
        self.train_data, self.test_data = read_data(self.cfg, self.train_data, self.test_data)

    def _setup(self, resume):
        cfg, workers = self.cfg, self.workers
        workers.load_data(self)
        images, labels = self.train_data
        steps_per_epoch = workers.steps_per_epoch(self, len(labels))
        state = workers.load_state(self) if resume else None
        if state is not None:
            cfg.fitted = state["config"]["fitted"]  # the plan goes on (refits still adapt it)
            # the budget is for the whole run: what earlier sessions used is spent
            self._t_start -= state.get("budget_used_s", 0.0)
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
            cfg.fitted = budget.plan(cfg, lambda x: workers.probe(self, x, labels), images,
                                     steps_per_epoch, len(self.test_data[1]),
                                     lambda: self.clock() - self._t_start)
            self.log(budget.plan_line(cfg, self.clock() - self._t_start))
        self.epoch, self.step, self.best_acc, self.history = 0, 0, -1.0, []
        self._position = None
        self.sched, total = self._schedule(cfg.fitted["total_steps"])
        if total != cfg.fitted["total_steps"]:
            cfg.fitted = {**cfg.fitted, "total_steps": total,
                          "epochs": math.ceil(total / steps_per_epoch)}
        if state is not None:
            self.model.load_state_dict(state["model"])
            resume_optimizer(self.opt, self.sched, state["optimizer"], state["schedule"])
            mr_random.set_rng_state(state["rng"])
            self.epoch, self.step = state["epoch"], state["step"]
            self.best_acc, self.history = state["best_acc"], state["history"]
            self._position = (EpochPosition.from_state(state["position"])
                              if state.get("position") else None)
            inside = ""
            if self._position:
                inside = f" (batch {self._position.batch} of epoch {self.epoch + 1})"
                if not self.is_main:  # steps not yet summed over the workers: counted once
                    self._position.pending = []
            self.log(f"resumed {cfg.out} at epoch {self.epoch}, step {self.step}{inside}")
            elsewhere = workers.resumed_elsewhere(state)
            if elsewhere:
                self.log(elsewhere)
        workers.after_setup(self)  # (MPI: every rank now holds rank 0's weights)
        self.step_lr = self.opt.param_groups[0]["lr"]  # the lr of the step last taken
        if cfg.ema:
            self.ema = ModelEMA(self.model, cfg.ema)
            if state is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
        self._eval_per_image = (cfg.fitted.get("eval_s_per_image") or 0) * budget.PROBE_EVAL_FACTOR
        self._last_eval_s = 0.0
        self._pace = budget.Pace(self.clock, self.step)
        self._checkpoint_every_s, self._last_save = cfg.checkpoint_every * 60, self.clock()
        if not self.is_main:
            return
        os.makedirs(cfg.out, exist_ok=True)
        self._write_config()
        # metrics.jsonl mirrors the checkpoint's history (drops epochs a crash lost)
        atomic_write_bytes(self.metrics_path,
                           "".join(json.dumps(m) + "\n" for m in self.history).encode())

    def train_step(self, x, y):
        """One optimiser step on the batch (``minires.train.train_step``, looked
        up at call time: tests and benchmarks patch it)."""
        return train_step(self.model, self.crit, self.opt, self.sched, x, y)

    def evaluate_on(self, images, labels):
        """Test loss and accuracy of ``eval_model`` on these images
        (``minires.train.evaluate``, looked up at call time: tests patch it)."""
        cfg = self.cfg
        return evaluate(self.eval_model, images, labels, cfg.eval_batch_size, cfg.device,
                        cfg.dtype, tta=cfg.tta)

    def _write_config(self):
        atomic_write_bytes(os.path.join(self.cfg.out, "config.json"),
                           json.dumps(asdict(self.cfg), indent=2).encode())

    def _evaluate(self, final=False):
        """Loss and accuracy on the test set (of ``eval_model``).  At the run's
        end the EMA's batch-norm statistics are first recomputed for its weights."""
        t0 = self.clock()
        if final and self.ema is not None:
            recalibrate_ema(self.ema, self.train_data, self.cfg, budget.RECALIBRATION_BATCHES)
        result = self.workers.evaluate(self)
        views = 2 if self.cfg.tta == "flip" else 1
        self._last_eval_s = self.clock() - t0
        self._eval_per_image = self._last_eval_s / max(1, len(self.test_data[1]) * views)
        return result

    def loader_crop(self):
        """The loader's crop for this epoch: small windows in the first
        ``early_epochs`` with ``--early-crop`` (progressive resizing)."""
        if self.epoch < self.cfg.fitted.get("early_epochs", 0):
            return {"padding": 0, "crop_size": self.cfg.early_crop}
        return {}

    def _checkpoint_state(self):
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "schedule": self.sched.state_dict(), "rng": mr_random.get_rng_state(),
                "epoch": self.epoch, "step": self.step, "best_acc": self.best_acc,
                "history": self.history, "config": asdict(self.cfg),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "budget_used_s": self.clock() - self._t_start, "position": None,
                "threads": parallel.get_num_threads(), "world_size": self.workers.world_size}

    def _train_epoch(self):
        """One epoch (or what is left of it): loop, step, meter."""
        cfg = self.cfg
        loader = self.workers.make_loader(self)
        if self.epoch and self.epoch == cfg.fitted.get("early_epochs"):
            self._pace = budget.Pace(self.clock, self.step)  # full-size steps from here: a new pace
        # the epoch's cursor and running sums: a resumed run's saved one, or a new one
        position, self._position = self._position or EpochPosition(), None
        meter = EpochMeter(self, position, len(loader))
        self.loss_curve = position.loss_curve  # mean training loss of every 10 steps
        for i, (x, y) in enumerate(position.batches(loader), position.batch):
            if self.step >= cfg.fitted["total_steps"]:  # (a refit may move the end)
                break
            # the lr this step uses (logged): afterwards the optimiser holds the
            # next step's, which past the last step is one-cycle's closed form just
            # below zero, as torch's
            self.step_lr = self.opt.param_groups[0]["lr"]
            loss, logits = self.workers.train_step(self, x, y, i)
            if self.ema is not None:
                self.ema.update(self.model)
            self.step += 1
            last = i == len(loader) - 1 or self.step >= cfg.fitted["total_steps"]
            stop, due = meter.record(loss, logits, y, last, self._votes())
            if cfg.time_budget is not None and (self.step % budget.refit_every(cfg.fitted) == 0
                                                or last):
                self._keep_to_budget()
                meter.steps_left(i, cfg.fitted["total_steps"])
            self._stop_agreed = self._stop_agreed or stop
            if (stop or due) and not last:  # (the epoch's end saves anyway)
                position.batch = i + 1
                self._save_position(position)
                if stop:
                    meter.close()
                    raise self._interrupted()
        return meter.close()

    # ---- Ctrl-C, SIGTERM and --checkpoint-every (minires.interrupts)
    def _votes(self):
        """[a stop was requested here, a periodic checkpoint is due by the
        main worker's clock]: summed over the workers, so all decide alike."""
        due = (self.is_main and self._checkpoint_every_s > 0
               and self.clock() - self._last_save >= self._checkpoint_every_s)
        return [1.0 if self._stops.signum else 0.0, 1.0 if due else 0.0]

    def _save_position(self, position):
        """last.ckpt in the middle of an epoch, with where the epoch stands."""
        if self.is_main:
            state = self._checkpoint_state()
            state["position"] = position.to_state()
            save_checkpoint(self.last_path, state)
        self._last_save = self.clock()

    def _interrupted(self, at_epoch_end=False):
        signum = self._stops.signum or signal.SIGINT
        what = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
        where = (f"at the end of epoch {self.epoch} (step {self.step})" if at_epoch_end else
                 f"at epoch {self.epoch + 1} step {self.step}")
        again = self.workers.resume_command(self.cfg.out)
        e = Interrupted(signum, f"{what} {where}; saved {self.last_path}; continue with: {again}")
        e.agreed, e.quiet = True, not self.is_main  # every worker stops here; one prints
        return e

    def _schedule(self, total):
        """The schedule over ``total`` steps, and that total (one step fewer
        where one-cycle would get a phase of zero length: ``schedule_steps``)."""
        total = schedule_steps(self.cfg, total)
        return build_schedule(self.opt, self.cfg, total, self.cfg.fitted["steps_per_epoch"]), total

    def _keep_to_budget(self):
        """Refit the steps still to run to the pace of the latest steps (see
        ``minires.budget``); every worker takes the main one's answer."""
        cfg, f = self.cfg, self.cfg.fitted
        pace, now = self._pace.look(self.step)
        if pace is None:
            return
        total = self.workers.agree(budget.refitted_total(
            cfg, f, self.step, pace, self._t_start + cfg.time_budget * 60 - now,
            len(self.test_data[1]), self._eval_per_image))
        if total == f["total_steps"]:
            return
        if total > self.step:
            self.sched, total = self._schedule(total)
            self.sched.last_epoch = self.step  # the same closed form over the new length
            self.sched._apply()
        cfg.fitted = {**f, "total_steps": total,
                      "epochs": max(self.epoch + 1, math.ceil(total / f["steps_per_epoch"])),
                      "refits": f.get("refits", 0) + 1,
                      "planned_steps": f.get("planned_steps", f["total_steps"])}
        if abs(total - f.get("logged_steps", f["total_steps"])) >= 0.02 * f["total_steps"] \
                or total <= self.step:
            cfg.fitted["logged_steps"] = total
            end = ("no other step fits: stopping now" if total <= self.step else
                   f"the schedule now ends after {total} steps ({cfg.fitted['epochs']} epochs)")
            self.log(f"time budget: {1000 * pace:.0f} ms per step at step {self.step} (the "
                     f"probe: {1000 * f['step_time_s']:.0f}); {end}")

    def run(self, resume=False):
        """Train (or continue, with ``resume``) to the end of the plan; returns
        the per-epoch metrics."""
        return self.workers.run(lambda: self._run(resume))

    def _run(self, resume):
        # the budget counts loading and the probe too (and, from the command,
        # the process's start)
        self._t_start = self._started_at if self._started_at is not None else self.clock()
        self._setup(resume)
        try:
            self.notify("on_run_start")
            # Ctrl-C and SIGTERM now finish the step and save (minires.interrupts)
            with StopRequests(announce=self.cfg.progress and self.is_main) as self._stops:
                self._stop_agreed = False
                return self._epochs()
        finally:
            self.notify("on_run_end")

    def _epochs(self):
        cfg = self.cfg
        t_start = time.perf_counter()
        while self.step < cfg.fitted["total_steps"]:
            tl, ta, ips = self._train_epoch()
            t_trained = self.clock()  # from here to the next epoch: not steps (budget.Pace)
            final = self.step >= cfg.fitted["total_steps"]
            vl = va = None
            if final or (cfg.eval_every and (self.epoch + 1) % cfg.eval_every == 0):
                vl, va = self._evaluate(final)
            self.epoch += 1
            m = {"epoch": self.epoch, "step": self.step, "lr": self.step_lr,
                 "train_loss": tl, "train_acc": ta, "test_loss": vl, "test_acc": va,
                 "images_per_s": ips, "elapsed_s": time.perf_counter() - t_start,
                 "loss_curve": self.loss_curve}
            self.history.append(m)
            best = va is not None and va > self.best_acc
            self.best_acc = max(self.best_acc, va if va is not None else -1.0)
            if self.is_main:
                with open(self.metrics_path, "a") as f:
                    f.write(json.dumps(m) + "\n")
                if final and cfg.time_budget is not None:
                    used = self.clock() - self._t_start
                    cfg.fitted = {**cfg.fitted, "used_s": round(used, 2)}
                if final or cfg.fitted.get("refits"):
                    self._write_config()  # the run folder says what the budget bought
                state = self._checkpoint_state()
                # best before last: killed between the two writes, the run resumes
                # from the previous last.ckpt and redoes this epoch, so best.ckpt
                # is never left behind the epoch it should hold
                if best:
                    save_checkpoint(self.best_path, state)
                save_checkpoint(self.last_path, state)
            test = f"test loss {vl:.4f} acc {va:.4f}" if va is not None else "(not evaluated)"
            self.log(f"epoch {self.epoch}/{cfg.fitted['epochs']}  train loss {tl:.4f} acc "
                     f"{ta:.4f}  {test}  {ips:.0f} img/s")
            self.notify("on_epoch_end", m)
            self._last_save = self.clock()
            if self.step < cfg.fitted["total_steps"] and (self._stop_agreed or self.workers.sum(
                    [1.0 if self._stops.signum else 0.0])[0] > 0):
                raise self._interrupted(at_epoch_end=True)
            self._pace.pause(self.clock() - t_trained)
        if cfg.time_budget is not None and self.history:
            self.log(budget.used_line(cfg, self.clock() - self._t_start, self.step,
                                      self._last_eval_s))
        return self.history


def _silent(*args, **kwargs):
    pass
