"""A training run's settings: ``TrainConfig``, its recipes and its checks.

Every field is a ``minires train`` flag (``batch_size`` is ``--batch-size``);
``validate()`` checks them all before any data is loaded or model built.
"""
import math
from dataclasses import dataclass, field

from .errors import ConfigError
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
    anneal: str = "cos"                 # one-cycle's annealing: cos | linear
    ema: float = 0.0                    # decay of an EMA of the weights (0: none); evaluated, saved
    tta: str = "none"                   # evaluation: none | flip (mean of the image's and its mirror's logits)
    eval_every: int = 1                 # evaluate every N epochs (0: only at the end); always at the end
    early_crop: int = 0                 # progressive resizing: the first epochs on random NxN windows
    early_fraction: float = 0.5         # ... for this fraction of the planned epochs
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    time_budget: float = None           # minutes for the whole run
    max_steps: int = None               # stop (and fit the schedule) after this many steps
    train_subset: int = None            # use only the first N training images
    init_from: str = None               # start from these weights (.safetensors, .npz, .pth)
    eval_batch_size: int = 500
    progress: bool = True
    # data-parallel training over MPI (minires.distributed); batch_size is then
    # the GLOBAL batch, split across the ranks
    distributed: bool = False
    sync_bn: bool = False               # batch-norm statistics over all ranks' shards
    dist_timeout: float = 300.0         # seconds a collective waits for a peer before aborting
    checkpoint_every: float = 10.0      # minutes between mid-epoch saves of last.ckpt (0: off)
    fitted: dict = field(default_factory=dict)  # the schedule as fitted (epochs, total steps)

    def validate(self):
        """Every setting in range, before any data is loaded or model built: a
        ConfigError naming the flag (``batch_size`` is ``--batch-size``)."""
        def bad(name, rule):
            value = getattr(self, name)
            return ConfigError(f"--{name.replace('_', '-')} must be {rule}, got {value!r}")
        from .errors import UnknownModelError
        from .models import check_name
        try:
            check_name(self.model)
        except UnknownModelError as e:
            raise UnknownModelError(f"--model: {e}") from None
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, "a whole number >= 1")
        for name in ("max_steps", "train_subset"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise bad(name, "a whole number >= 1")
        finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
        if not finite(self.lr) or self.lr <= 0:
            raise bad("lr", "a positive number")
        if self.time_budget is not None and (not finite(self.time_budget) or self.time_budget <= 0):
            raise bad("time_budget", "a positive number of minutes")
        if not finite(self.momentum) or not 0 <= self.momentum < 1:
            raise bad("momentum", "in [0, 1)")
        if not finite(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", ">= 0")
        if not finite(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", "in [0, 1)")
        if not finite(self.warmup_epochs) or self.warmup_epochs < 0:
            raise bad("warmup_epochs", ">= 0")
        if isinstance(self.ema, bool) or not finite(self.ema) or not 0 <= self.ema < 1:
            raise bad("ema", "0 (off) or a decay in (0, 1) such as 0.99")
        if self.tta not in TTA_MODES:
            raise bad("tta", f"one of {', '.join(TTA_MODES)}")
        if self.anneal not in ANNEALS:
            raise bad("anneal", f"one of {', '.join(ANNEALS)}")
        if not isinstance(self.eval_every, int) or isinstance(self.eval_every, bool) \
                or self.eval_every < 0:
            raise bad("eval_every", "a whole number >= 0 (0: only at the end)")
        if not isinstance(self.early_crop, int) or isinstance(self.early_crop, bool) or \
                not (self.early_crop == 0 or 8 <= self.early_crop < 32):
            raise bad("early_crop", "0 (off) or a window size from 8 to 31 pixels")
        if not finite(self.early_fraction) or not 0 < self.early_fraction < 1:
            raise bad("early_fraction", "in (0, 1)")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {', '.join(SCHEDULES)}")
        if not finite(self.checkpoint_every) or self.checkpoint_every < 0:
            raise bad("checkpoint_every", "a number of minutes >= 0 (0: only at epoch ends)")
        if not finite(self.dist_timeout) or self.dist_timeout <= 0:
            raise bad("dist_timeout", "a positive number of seconds")
        return self

    @classmethod
    def from_recipe(cls, name, **overrides):
        if name not in RECIPES:
            raise ConfigError(f"unknown recipe {name!r}; recipes: {sorted(RECIPES)}")
        kw = dict(RECIPES[name])
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)


NUM_CLASSES = 10  # CIFAR-10
SCHEDULES = ("onecycle", "multistep", "cosine", "constant")
TTA_MODES = ("none", "flip")
ANNEALS = ("cos", "linear")
