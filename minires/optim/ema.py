"""An exponential moving average (EMA) of a model's weights, for evaluation.

After every optimiser step, each averaged weight moves a little toward the
live one::

    ema = d * ema + (1 - d) * w,     d = min(decay, (1 + t) / (10 + t))

where ``t`` counts the updates so far.  The ramp ``(1 + t) / (10 + t)`` (as
TensorFlow's ``ExponentialMovingAverage(num_updates=...)``) keeps the first
few hundred steps from dragging the random initial weights along.

Batch norm: its running mean and variance are statistics *of the live
weights' activations*, so averaging them like weights is only an
approximation.  ``recalibrate_batchnorm`` recomputes them for the averaged
weights from a few training batches (a cumulative average, exactly as
torch's ``momentum=None``); the trainer does this before it evaluates.
"""
import copy

from ..grad_mode import no_grad


class ModelEMA:
    """The averaged copy of ``model`` (``ema.module``, kept in eval mode).

    ``decay`` in (0, 1): the weight of the past at each update; the average
    spans about ``1 / (1 - decay)`` steps."""

    def __init__(self, model, decay):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
            raise ValueError(f"ModelEMA: decay must be a number in (0, 1), got {decay!r}")
        self.decay, self.updates = float(decay), 0
        self.module = copy.deepcopy(model).eval()
        self.module.zero_grad()

    def rate(self):
        """The ``d`` of the next update."""
        t = self.updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    def update(self, model):
        """Move the average toward ``model``'s current weights (after ``opt.step()``)."""
        d = self.rate()
        self.updates += 1
        ours = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            e = ours[name].data
            # e += (1 - d) (w - e): one temporary, in the weights' dtype
            e += (p.data - e) * e.dtype.type(1.0 - d)
        ours = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            e = ours[name]
            if e.dtype.kind == "f":
                e += (b - e) * e.dtype.type(1.0 - d)  # a first guess; see recalibrate_batchnorm
            else:
                e[...] = b  # counters (num_batches_tracked) are copied

    def state_dict(self):
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state):
        self.module.load_state_dict(state["module"])
        self.updates, self.decay = int(state["updates"]), float(state["decay"])


def recalibrate_batchnorm(model, batches):
    """Recompute every batch norm's running statistics of ``model`` from
    ``batches`` (input arrays), as a cumulative average over them, in train
    mode without gradients; ``model`` is left in eval mode.  Returns the
    number of batches used."""
    norms = [m for m in model.modules() if getattr(m, "track_running_stats", False)
             and getattr(m, "running_mean", None) is not None]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative: every batch counts the same
    model.train()
    n = 0
    try:
        with no_grad():
            for x in batches:
                model(x)
                n += 1
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()
    return n
