"""``minires train --tensorboard``: a run's curves as TensorBoard event files.

``TensorBoardLogger`` is a trainer callback (``Trainer(cfg, callbacks=[...])``):
the Trainer calls it and never knows what it does.  It writes, through
``tensorboardX.SummaryWriter``:

* per logged step (the trainer reads its counters every 10 steps), at the
  optimiser step: ``step/lr`` (the learning rate of the next step, as
  metrics.jsonl's ``lr``), ``step/images_per_s`` (over those 10 steps) and
  ``step/train_loss`` (their mean loss, metrics.jsonl's ``loss_curve``);
* per epoch, at the step the epoch ended: ``epoch/train_loss``,
  ``epoch/train_acc``, ``epoch/test_loss``, ``epoch/test_acc`` (the epoch's
  row of metrics.jsonl);
* per epoch, the gradient flow: one forward and backward of a fixed probe
  batch (class-balanced training images, not augmented) through
  ``minires.gradflow.gradient_profile``, the measurement `minires gradflow`
  makes, which puts back the gradients, the BatchNorm statistics and (here)
  the random streams, so logging does not change the run.  For every conv and
  linear layer, named ``<depth>_<layer>`` so that TensorBoard sorts them input
  first: ``grad_norm/...`` (the scalar ||dL/dW||) and ``grad_hist/...`` (the
  histogram of dL/dW's entries).

Everything uses one x axis, the optimiser step.  Only the main worker (MPI
rank 0) writes.  The event files are written by tensorboardX itself, not by
minires's atomic-write helper: they are append-only logs that TensorBoard
reads while they grow, and a resumed run adds a new file (marking the steps
it redoes as replaced) rather than rewriting one.
"""
import itertools
import os

from .errors import MissingExtraError

PROBE_SIZE = 128  # the probe batch of `minires gradflow`, so the numbers compare
_writer_ids = itertools.count(1)


def require_tensorboardx():
    """``tensorboardX.SummaryWriter``, or a MissingExtraError naming the extra."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise MissingExtraError(
            "--tensorboard needs tensorboardX: pip install 'minires[tensorboard]' (in a source "
            "checkout: pip install -e '.[tensorboard]')") from None
    return SummaryWriter


class TensorBoardLogger:
    """Writes a run's scalars and gradient histograms under ``logdir``
    (default: the run folder, ``cfg.out``).  See the module docstring."""

    def __init__(self, logdir=None, probe_size=PROBE_SIZE):
        self._SummaryWriter = require_tensorboardx()  # fail before any training starts
        self.logdir, self.probe_size = logdir, probe_size
        self.writer = None
        self._probe = None

    # ---- the Trainer's callbacks
    def on_run_start(self, trainer):
        if not trainer.is_main:
            return
        self.logdir = self.logdir or trainer.cfg.out
        # A resumed run redoes the steps after its checkpoint; purge_step tells
        # TensorBoard to drop what an earlier session logged from there on.
        purge = trainer.step + 1 if trainer.step else None
        # tensorboardX names a file by the second and the host only: the suffix
        # keeps two writers of one second (a quick resume) from sharing a file
        self.writer = self._SummaryWriter(self.logdir, purge_step=purge,
                                          filename_suffix=f".{os.getpid()}.{next(_writer_ids)}")
        trainer.log(f"tensorboard: event files in {self.logdir} "
                    f"(view with: tensorboard --logdir {self.logdir})")

    def on_log_step(self, trainer, record):
        if self.writer is None:
            return
        step = record["step"]
        for key in ("lr", "images_per_s", "train_loss"):
            self.writer.add_scalar(f"step/{key}", record[key], step)

    def on_epoch_end(self, trainer, metrics):
        # With synchronised batch norm the probe's forward is a collective, so
        # every rank runs it; otherwise only the rank that writes.
        if self.writer is None and not getattr(trainer.cfg, "sync_bn", False):
            return
        profile = self._gradient_profile(trainer)
        if self.writer is None:
            return
        w, step = self.writer, metrics["step"]
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            if metrics[key] is not None:  # an epoch --eval-every skipped has no test numbers
                w.add_scalar(f"epoch/{key}", metrics[key], step)
        for layer in profile["layers"]:
            tag = f"{layer['depth']:03d}_{layer['name']}"
            w.add_scalar(f"grad_norm/{tag}", layer["grad_weight"], step)
            w.add_histogram(f"grad_hist/{tag}", profile["weight_grads"][layer["name"]], step)
        w.flush()  # an epoch is the unit a live TensorBoard should see whole

    def on_run_end(self, trainer):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ---- the gradient-flow probe
    def probe_batch(self, trainer):
        """The fixed probe batch (on the run's device), drawn once per run:
        ``probe_size`` class-balanced training images, seeded by the run's seed."""
        if self._probe is None:
            from . import backend
            from .data import normalize
            from .data.subset import balanced_sample
            cfg, (images, labels) = trainer.cfg, trainer.train_data
            idx = balanced_sample(labels, min(self.probe_size, len(labels)), cfg.seed)
            self._probe = (backend.to_device(normalize(images[idx]).astype(cfg.dtype), cfg.device),
                           backend.to_device(labels[idx].astype("int64"), cfg.device))
        return self._probe

    def _gradient_profile(self, trainer):
        from . import random as mr_random
        from .gradflow import gradient_profile
        x, y = self.probe_batch(trainer)
        rng = mr_random.get_rng_state()  # a model with dropout draws in the probe's forward
        try:
            return gradient_profile(trainer.model, x, y, weight_grads=True)
        finally:
            mr_random.set_rng_state(rng)

