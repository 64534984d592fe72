"""Learning-rate schedules with torch.optim.lr_scheduler's step-by-step values.

Each schedule is a closed form of the step count ``t`` (``last_epoch``), which
makes a resumed run exact: save ``state_dict()``, load it, keep stepping.
Construction sets the lr for t = 0, and each ``step()`` advances t by one.
"""
import bisect
import math


class LRScheduler:
    """Base of the schedules: sets each parameter group's ``lr`` to
    ``lr_at(t, base_lr)`` at construction (t = 0) and after each ``step()``."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def lr_at(self, t, base_lr):
        raise NotImplementedError

    def _apply(self):
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.lr_at(self.last_epoch, base)

    def step(self):
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, sd):
        self.__dict__.update(sd)
        self._apply()


class MultiStepLR(LRScheduler):
    """lr = base * gamma ** (number of milestones <= t).  He et al.: 0.1, /10 at
    50% and 75% of training."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        self.milestones, self.gamma = sorted(int(m) for m in milestones), gamma
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, t)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base - eta_min) * (1 + cos(pi * t / T_max)) / 2, torch's
    closed form (no restarts)."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class LinearLR(LRScheduler):
    """Linear warm-up: the factor goes from start_factor to end_factor over
    total_iters steps, then stays."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError("LinearLR: start_factor must be in (0, 1] and end_factor in [0, 1]")
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        frac = min(t, self.total_iters) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * frac)


class SequentialLR(LRScheduler):
    """Runs ``schedulers[i]`` from milestone i-1 on, each restarted at 0 (e.g.
    LinearLR warm-up then CosineAnnealingLR)."""

    def __init__(self, optimizer, schedulers, milestones):
        if len(milestones) != len(schedulers) - 1:
            raise ValueError("SequentialLR: need one milestone fewer than schedulers")
        self.schedulers, self.milestones = schedulers, list(milestones)
        super().__init__(optimizer)

    def lr_at(self, t, base_lr):
        i = bisect.bisect_right(self.milestones, t)
        start = self.milestones[i - 1] if i > 0 else 0
        return self.schedulers[i].lr_at(t - start, base_lr)

    def state_dict(self):
        sd = super().state_dict()
        sd["schedulers"] = [s.state_dict() for s in self.schedulers]
        return sd

    def load_state_dict(self, sd):
        sd = dict(sd)
        for s, ssd in zip(self.schedulers, sd.pop("schedulers")):
            s.__dict__.update(ssd)
        super().load_state_dict(sd)


class OneCycleLR(LRScheduler):
    """Smith's one-cycle policy, as torch's OneCycleLR (two phases, cosine
    annealing).  Like torch's default, it also cycles momentum inversely to the
    lr (max_momentum -> base_momentum -> max_momentum) when
    ``cycle_momentum=True`` and the optimiser has momentum."""

    def __init__(self, optimizer, max_lr, total_steps, pct_start=0.3, anneal_strategy="cos",
                 cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
                 div_factor=25.0, final_div_factor=1e4):
        if total_steps <= 0:
            raise ValueError(f"OneCycleLR: total_steps must be positive, got {total_steps}")
        self.total_steps, self.pct_start = int(total_steps), pct_start
        self.anneal_strategy = anneal_strategy
        self.cycle_momentum = cycle_momentum
        self.base_momentum, self.max_momentum = base_momentum, max_momentum
        self.div_factor, self.final_div_factor = div_factor, final_div_factor
        n = len(optimizer.param_groups)
        max_lrs = list(max_lr) if isinstance(max_lr, (list, tuple)) else [max_lr] * n
        for g, m in zip(optimizer.param_groups, max_lrs):
            g["initial_lr"] = m / div_factor
            g["max_lr"] = m
            g["min_lr"] = g["initial_lr"] / final_div_factor
        self.phase_ends = [float(pct_start * self.total_steps) - 1, float(self.total_steps - 1)]
        if self.phase_ends[0] == 0 or self.phase_ends[0] == self.phase_ends[1]:
            # a phase of zero length: torch fails here with a ZeroDivisionError at step 0
            raise ValueError(
                f"OneCycleLR: total_steps={self.total_steps} with pct_start={pct_start} gives a "
                f"phase of zero length (pct_start * total_steps must not be 1 or total_steps); "
                f"use more steps, another pct_start or another schedule")
        super().__init__(optimizer)

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "linear":
            return (end - start) * pct + start
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    def _phase(self, t):
        if t > self.total_steps:  # torch allows exactly total_steps steps
            raise ValueError(f"OneCycleLR: tried to step {t} times; total_steps is "
                             f"{self.total_steps}")
        start = 0.0
        for i, end in enumerate(self.phase_ends):
            if t <= end or i == len(self.phase_ends) - 1:
                return i, (t - start) / (end - start)
            start = end

    def _apply(self):
        i, pct = self._phase(self.last_epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = self._lr(i, pct, g["initial_lr"], g["max_lr"], g["min_lr"])
            if self.cycle_momentum and "momentum" in g:
                moms = [(self.max_momentum, self.base_momentum),
                        (self.base_momentum, self.max_momentum)][i]
                g["momentum"] = self._anneal(moms[0], moms[1], pct)

    def _lr(self, phase, pct, initial_lr, max_lr, min_lr):
        start, end = [(initial_lr, max_lr), (max_lr, min_lr)][phase]
        return self._anneal(start, end, pct)

    def lr_at(self, t, base_lr):
        """The lr at step ``t`` of a group that starts at ``base_lr`` (its
        max_lr / div_factor), as ``step()`` sets it."""
        i, pct = self._phase(t)
        max_lr = base_lr * self.div_factor
        return self._lr(i, pct, base_lr, max_lr, base_lr / self.final_div_factor)
