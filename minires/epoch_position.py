"""Where a run stands inside an epoch, so that ``--resume`` goes on at the next step.

``last.ckpt`` holds one when it was written in the middle of an epoch (on
Ctrl-C or SIGTERM, and every ``--checkpoint-every`` minutes).  It holds what
the rest of the epoch depends on: the index of the next batch; the random
streams as they were when the epoch began (the loader draws the epoch's
order, crops and flips all at once at its start, so drawing them again from
that state gives the same batches); and the epoch's running training-loss
and accuracy sums, as exact floats and ints, so that even the epoch's row of
``metrics.jsonl`` comes out as in an uninterrupted run.
"""
from dataclasses import dataclass, field

from . import random as mr_random

WINDOW = 10  # steps whose losses stay on the device between two readings (one sync, not ten)


@dataclass
class EpochPosition:
    batch: int = 0                  # the next batch of the epoch
    epoch_rng: dict = None          # minires.random's streams when the epoch began
    loss_sum: float = 0.0           # sum of loss x batch size over the windows read so far
    correct: int = 0                # hits and images over those windows
    seen: int = 0
    loss_curve: list = field(default_factory=list)  # the mean loss of every window of 10 steps
    pending: list = field(default_factory=list)     # (loss x n, hits, n) of steps not yet read

    def batches(self, loader):
        """The loader's batches from this position on.  The epoch's order,
        crops and flips are drawn from the random streams as they were when
        the epoch began, and the streams are then left as they are now."""
        now = mr_random.get_rng_state()
        if self.epoch_rng is not None:  # resumed mid-epoch
            mr_random.set_rng_state(self.epoch_rng)
        self.epoch_rng = mr_random.get_rng_state()
        batches = loader.iterate(self.batch)  # (draws the whole epoch's randomness)
        if self.batch:
            mr_random.set_rng_state(now)  # (the state the plan left them in: the same)
        return batches

    def add(self, loss, logits, labels):
        """A step's loss and hits, kept on the device until the next reading."""
        self.pending.append((loss * len(labels), (logits.argmax(axis=1) == labels).sum(),
                             len(labels)))

    def read_window(self, sum_over_workers, votes):
        """Read the steps not yet read, summed over the workers together with
        ``votes`` (so every worker sees the same numbers and decides alike);
        returns (the window's mean loss, its accuracy, its images, the votes)."""
        loss, hits, count, *votes = sum_over_workers(
            [sum(float(v) for v, _, _ in self.pending), sum(int(c) for _, c, _ in self.pending),
             sum(n for _, _, n in self.pending), *votes])
        self.correct += int(hits)
        self.seen += int(count)
        self.loss_curve.append(loss / count)
        self.loss_sum += loss
        self.pending.clear()
        return loss / count, hits / count, count, votes

    def to_state(self):
        """Plain numbers for the checkpoint (device scalars read back now)."""
        return {"batch": int(self.batch), "epoch_rng": self.epoch_rng,
                "loss_sum": float(self.loss_sum), "correct": int(self.correct),
                "seen": int(self.seen), "loss_curve": [float(v) for v in self.loss_curve],
                "pending": [[float(v), int(c), int(n)] for v, c, n in self.pending]}

    @classmethod
    def from_state(cls, state):
        return cls(batch=int(state["batch"]), epoch_rng=state["epoch_rng"],
                   loss_sum=float(state["loss_sum"]), correct=int(state["correct"]),
                   seen=int(state["seen"]), loss_curve=list(state["loss_curve"]),
                   pending=[tuple(p) for p in state["pending"]])
