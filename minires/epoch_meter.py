"""The bookkeeping of one training epoch, so that the epoch loop reads
loop -> step -> meter.

Every step's loss and hits stay on the device; every ``WINDOW`` steps (and at
the epoch's last step) the meter reads them in one sum over the workers,
together with the workers' votes to stop or to checkpoint (so all decide
alike), stops the run on a non-finite loss, moves the progress bar and tells
the callbacks (``on_log_step``).  The sums live in the ``EpochPosition``, so a
checkpoint taken mid-epoch carries them.
"""
import math
import time

from tqdm import tqdm

from .engine import NonFiniteLoss
from .epoch_position import WINDOW


class EpochMeter:
    """Counts one epoch of ``trainer``'s steps from ``position`` on, over an
    epoch of ``n_batches`` batches."""

    def __init__(self, trainer, position, n_batches):
        self.trainer, self.position, self.n_batches = trainer, position, n_batches
        cfg = trainer.cfg
        self.bar = tqdm(total=min(n_batches - position.batch, cfg.fitted["total_steps"] - trainer.step),
                        desc=f"epoch {trainer.epoch + 1}/{cfg.fitted['epochs']}",
                        disable=not (cfg.progress and trainer.is_main), mininterval=1.0, leave=False)
        self.started = self.window_started = time.perf_counter()
        self.seen_before = position.seen

    def record(self, loss, logits, labels, last, votes):
        """Count a step; read the window when it is full or ``last``.  Returns
        (stop, checkpoint due) as every worker agrees on them."""
        position, workers = self.position, self.trainer.workers
        position.add(loss, logits, labels)
        if len(position.pending) == WINDOW or last:
            votes = self._read_window(votes)
        elif not workers.votes_every_step:
            votes = [0.0, 0.0]  # (the workers decide together, at the next reading)
        self.bar.update(1)
        return votes[0] > 0, votes[1] > 0

    def steps_left(self, batch, total_steps):
        """The bar's length after a time-budget refit (``batch`` the epoch's
        batch just done, ``total_steps`` the run's new end)."""
        done = batch + 1 - self.position.batch
        self.bar.total = min(self.n_batches - self.position.batch,
                             done + total_steps - self.trainer.step)

    def close(self):
        """The epoch's (mean training loss, accuracy, images per second)."""
        self.bar.close()
        p = self.position
        seconds = time.perf_counter() - self.started
        return (p.loss_sum / max(p.seen, 1), p.correct / max(p.seen, 1),
                (p.seen - self.seen_before) / seconds)

    def _read_window(self, votes):
        t, p = self.trainer, self.position
        loss, acc, count, votes = p.read_window(t.workers.sum, votes)
        if not math.isfinite(p.loss_sum):
            self.bar.close()
            raise NonFiniteLoss(
                f"the training loss became non-finite at epoch {t.epoch + 1}, step {t.step} "
                f"(lr {t.step_lr:.4g}); the last good checkpoint is kept at "
                f"{t.last_path}; try a lower --lr")
        now = time.perf_counter()
        self.bar.set_postfix(loss=f"{p.loss_sum / p.seen:.3f}", acc=f"{p.correct / p.seen:.3f}",
                             img_s=f"{(p.seen - self.seen_before) / (now - self.started):.0f}")
        t.notify("on_log_step", {
            "step": t.step, "lr": t.step_lr, "train_loss": loss,
            "train_acc": acc, "images_per_s": count / (now - self.window_started)})
        self.window_started = now
        return votes
