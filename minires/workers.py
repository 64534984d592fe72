"""The workers strategy of a run in one process: how ``minires.train.Trainer``
loads, builds, steps and agrees when there is one worker.

``minires.distributed.MPIRanks`` has the same methods for one replica per
MPI rank; the Trainer does everything else the same way for both.
"""
import math

import numpy as np

from . import parallel
from .checkpoint import load_checkpoint
from .engine import build_model, probe_step_time


class OneProcess:
    """The workers strategy of a run in one process (its ops use every core).

    Each method gets the Trainer; ``minires.distributed.MPIRanks`` has the
    same methods for one replica per MPI rank."""

    is_main = True  # only the main worker writes files, logs and shows progress
    world_size = 1
    votes_every_step = True  # Ctrl-C is looked at after every step (MPI: every 10)

    def load_data(self, trainer):
        trainer.read_data()

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
                           device=cfg.device, dtype=cfg.dtype, **trainer.loader_crop())

    def train_step(self, trainer, x, y, i):
        """Step ``i`` of the epoch."""
        return trainer.train_step(x, y)

    def sum(self, values):
        """Sums of per-worker counters over all workers (here: one)."""
        return list(values)

    def agree(self, value):
        """One value for all workers (the main worker's)."""
        return value

    def evaluate(self, trainer):
        return trainer.evaluate_on(*trainer.test_data)

    def run(self, body):
        return body()

    def resume_command(self, out):
        return f"minires train --resume --out {out}"

    def resumed_elsewhere(self, state):
        """A line when the run goes on with another thread count (None if not)."""
        before, now = state.get("threads"), parallel.get_num_threads()
        if state.get("world_size", 1) != 1:
            return (f"resumed in one process (the run had {state['world_size']} MPI ranks): "
                    f"the same global batch, order and schedule; the weights are not "
                    f"bit-identical to an uninterrupted run (the gradient sums and per-replica "
                    f"batch norm were split differently)")
        if before is None or before == now:
            return None
        return (f"resumed on {now} thread{'s' * (now != 1)} (the run had {before}): the same "
                f"batches and schedule, and the same weights bit for bit (minires's sums do "
                f"not depend on the thread count)")
