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


@dataclass
class EpochPosition:
    batch: int = 0                  # the next batch of the epoch
    epoch_rng: dict = None          # minires.random's streams when the epoch began
    loss_sum: float = 0.0           # sum of loss x batch size over the windows read so far
    correct: int = 0                # hits and images over those windows
    seen: int = 0
    loss_curve: list = field(default_factory=list)  # the mean loss of every window of 10 steps
    pending: list = field(default_factory=list)     # (loss x n, hits, n) of steps not yet read

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
