"""``--time-budget M``: how many steps fit in M minutes, and keeping to it.

The budget is a ceiling on the whole run, from the process's start to its
exit: loading the data, the speed probe, every step, every evaluation, the
checkpoints and the last evaluation all count.  The plan counts *steps*,
not whole epochs, so the last epoch may stop part-way and no budget is left
unused for want of a whole epoch.

What is not a step is reserved up front: the evaluations still to come
(the probe's time per test image, twice with flip TTA), the EMA's
batch-norm recalibration, and ``end_reserve`` for the last checkpoint
writes and the exit.  The probe times a bare step on one batch; the real
loop (loader thread, logging) runs a little slower, and a shared machine
speeds up and slows down.  So every ``REFIT_EVERY`` steps the trainer
measures the pace of the latest ``PACE_WINDOW`` or more steps (``Pace``,
evaluations left out) and refits the steps still to run, up or down
(``refitted_total``); the schedule is rebuilt over the new total at the
same step, so the lr still anneals to its end.  The run stops when no step
fits any more.
"""
import math
import os
import time

from . import backend, sysinfo
from .errors import ConfigError

REFIT_EVERY = 50          # the most steps between looks at the pace (fewer in a short plan)
RECALIBRATION_BATCHES = 20  # training batches that recompute the EMA's batch-norm statistics
REFIT_TOLERANCE = 0.005   # refits smaller than this fraction of the plan are not worth an lr jump
PACE_WINDOW = 20          # the pace is measured over at least this many steps (one is noisy)
PROBE_EVAL_FACTOR = 1.1   # the probe times the forward alone; an evaluation also normalises


def end_reserve(budget_s):
    """Seconds kept free at the end: the last checkpoint writes, the exit
    and the noise of a shared machine (2 s, or 1% of a long budget)."""
    return max(2.0, 0.01 * budget_s)


def process_start(clock=time.perf_counter):
    """The ``clock`` time at which this process started (Linux: from
    /proc/self/stat, so that Python's start and the imports are counted),
    else now."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - started_ticks / os.sysconf("SC_CLK_TCK")
        return clock() - max(0.0, min(age, 60.0))  # a clock mix-up never costs more than a minute
    except (OSError, ValueError, IndexError):
        return clock()


def evaluations_between(cfg, steps_per_epoch, first_step, last_step):
    """Evaluations the trainer runs from ``first_step`` (an evaluation there
    is still to come) to ``last_step``: one at each epoch end that
    ``--eval-every`` names, and one at the end of the run (counted once
    when the two coincide)."""
    n = 1  # the run's last evaluation
    if cfg.eval_every:
        every = cfg.eval_every * steps_per_epoch
        ends = last_step // every - first_step // every  # epoch ends in (first, last]
        if first_step > 0 and first_step % every == 0:
            ends += 1  # a look at an epoch's last step comes before that epoch's evaluation
        if last_step % every == 0:
            ends -= 1  # the run's end is already counted
        n += max(0, ends)
    return n


def refit_every(fitted):
    """Steps between looks at the pace: REFIT_EVERY, or a twentieth of a
    short plan (at least 5), so a 3-minute run is watched as closely."""
    return max(5, min(REFIT_EVERY, fitted.get("planned_steps", fitted["total_steps"]) // 20))


def evaluation_s(cfg, n_test, eval_per_image):
    views = 2 if cfg.tta == "flip" else 1
    return n_test * eval_per_image * views


def recalibration_s(cfg, step_s):
    """The EMA's batch-norm recalibration: a forward in train mode without
    gradients, about a quarter of a step (measured: 0.17-0.25), per batch."""
    return RECALIBRATION_BATCHES * step_s / 4 if cfg.ema else 0.0


def steps_that_fit(cfg, seconds_left, step_s, steps_per_epoch, n_test, eval_per_image, at_step=0,
                   early=None):
    """How many more steps (from ``at_step``) fit in ``seconds_left``, with the
    evaluations and the EMA recalibration they bring; 0 when none does.
    ``early``: ``(steps, seconds per step)`` of the small-crop steps still to
    run first (``--early-crop``), which are cheaper."""
    n_early, early_s = early if early else (0, step_s)

    def cost(n):  # grows with n, so the largest n that fits is found by bisection
        evals = evaluations_between(cfg, steps_per_epoch, at_step, at_step + n)
        return min(n, n_early) * early_s + max(0, n - n_early) * step_s + \
            evals * evaluation_s(cfg, n_test, eval_per_image) + recalibration_s(cfg, step_s)
    lo, hi = 0, max(0, int(seconds_left // min(step_s, early_s))) + 1  # cost(hi) > seconds_left
    if cost(1) > seconds_left:
        return 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= seconds_left else (lo, mid)
    return lo


def fit_schedule(cfg, steps_per_epoch, n_test, step_time=None, eval_per_image=None,
                 spent_s=0.0, early_step_time=None):
    """The run's length: total steps (and the epochs they touch), so that
    ``--epochs``, ``--max-steps`` and ``--time-budget`` (minutes) are all
    honoured.  ``spent_s``: seconds the run has used already (loading the
    data, the probe).  With ``--early-crop``, the first ``early_epochs``
    (``--early-fraction`` of the planned epochs) run at ``early_step_time``.
    Saved with the run; a resumed run keeps it."""
    total, early_epochs = cap(cfg, steps_per_epoch), 0
    for round_ in range(8):  # the early epochs depend on the epochs, and these on them
        if cfg.early_crop:  # (the last epoch is always at full size)
            epochs = math.ceil(total / steps_per_epoch)
            early = max(0, min(epochs - 1, round(cfg.early_fraction * epochs)))
            if round_ and early == early_epochs:
                break
            early_epochs = early
        if cfg.time_budget is not None:
            budget_s = cfg.time_budget * 60
            left = budget_s - spent_s - end_reserve(budget_s)
            early = (early_epochs * steps_per_epoch, early_step_time) if early_epochs else None
            total = min(cap(cfg, steps_per_epoch), steps_that_fit(
                cfg, left, step_time, steps_per_epoch, n_test,
                eval_per_image * PROBE_EVAL_FACTOR, early=early))
    return {"epochs": math.ceil(total / steps_per_epoch), "total_steps": total,
            "steps_per_epoch": steps_per_epoch, "step_time_s": step_time,
            "eval_s_per_image": eval_per_image, "spent_s": spent_s,
            "early_epochs": early_epochs, "early_step_time_s": early_step_time}


def plan(cfg, probe, images, steps_per_epoch, n_test, elapsed):
    """The run's plan (``fitted``): with a budget, ``probe(images)`` gives
    (seconds per step, per test image), also on the ``--early-crop``
    windows; ``elapsed()`` is the time the run has used so far.  A budget
    in which not one step fits is a ``ConfigError`` saying what would do."""
    step_s = eval_per_image = early_s = None
    if cfg.time_budget is not None:
        step_s, eval_per_image = probe(images)
        if cfg.early_crop:
            early_s = probe(images[:, :cfg.early_crop, :cfg.early_crop])[0]
    fitted = fit_schedule(cfg, steps_per_epoch, n_test, step_s, eval_per_image,
                          spent_s=elapsed(), early_step_time=early_s)
    if fitted["total_steps"] == 0:
        raise ConfigError(too_small(cfg, fitted, n_test))
    return fitted


def cap(cfg, steps_per_epoch):
    """The most steps ``--epochs`` and ``--max-steps`` allow."""
    total = cfg.epochs * steps_per_epoch
    return total if cfg.max_steps is None else min(total, cfg.max_steps)


def too_small(cfg, fitted, n_test):
    """The error message of a budget in which not one step fits."""
    step_s, spent = fitted["step_time_s"], fitted["spent_s"]
    work = step_s + evaluation_s(cfg, n_test, fitted["eval_s_per_image"]) + \
        recalibration_s(cfg, step_s)
    need_min = math.ceil((spent + work + 2.0) / 0.99 / 6) / 10  # minutes, rounded up to 0.1
    return (f"--time-budget {cfg.time_budget:g} min is too short for one step: loading the "
            f"data and the probe took {spent:.1f} s, a step takes {1000 * step_s:.0f} ms and "
            f"the last evaluation ({n_test} test images) about {work - step_s:.1f} s; give at "
            f"least --time-budget {need_min:g}")


class Pace:
    """Seconds per step, measured over the last ``PACE_WINDOW`` or more steps
    from (clock, step) marks: the first at the run's start, one more at each
    look; what is not a step (evaluations, checkpoints) is ``pause``d out."""

    def __init__(self, clock, step):
        self.clock, self.marks = clock, [(clock(), step)]

    def pause(self, seconds):
        """Leave ``seconds`` (an evaluation, a checkpoint) out of the pace."""
        self.marks = [(t + seconds, s) for t, s in self.marks]

    def look(self, step):
        """``(seconds per step or None when too few steps tell, now)``."""
        now = self.clock()
        t, s = next((m for m in reversed(self.marks) if step - m[1] >= PACE_WINDOW),
                    self.marks[0])
        self.marks.append((now, step))
        return ((now - t) / (step - s) if step - s >= 5 else None), now


def refitted_total(cfg, fitted, step, pace, seconds_to_deadline, n_test, eval_per_image):
    """The run's new total of steps at ``step``, at ``pace`` seconds per step,
    ``seconds_to_deadline`` before the budget ends; the old total when the
    change is too small to be worth an lr jump (never near the end).  In
    the small-crop epochs, the full-size steps to come are that pace times
    the probe's ratio of the two."""
    spe = fitted["steps_per_epoch"]
    left = seconds_to_deadline - end_reserve(cfg.time_budget * 60)
    early = None
    n_early = fitted.get("early_epochs", 0) * spe - step
    if n_early >= 0 and fitted.get("early_epochs"):  # the pace was measured on the windows
        early, pace = (n_early, pace), pace * fitted["step_time_s"] / fitted["early_step_time_s"]
    total = min(cap(cfg, spe), step + steps_that_fit(cfg, left, pace, spe, n_test,
                                                     eval_per_image, at_step=step, early=early))
    old_left, new_left = fitted["total_steps"] - step, total - step
    if new_left > 2 * refit_every(fitted) and \
            abs(new_left - old_left) < REFIT_TOLERANCE * fitted["total_steps"]:
        return fitted["total_steps"]
    return total


def plan_line(cfg, spent_s):
    f = cfg.fitted
    line = f"plan: {f['epochs']} epochs, {f['total_steps']} steps ({f['steps_per_epoch']} per epoch)"
    if f.get("early_epochs"):
        line += f"; the first {f['early_epochs']} on {cfg.early_crop}x{cfg.early_crop} crops"
    if cfg.time_budget is not None:
        early = (f" ({1000 * f['early_step_time_s']:.0f} ms on the crops)"
                 if f.get("early_epochs") else "")
        line += (f" to fit --time-budget {cfg.time_budget:g} min: the probe measured "
                 f"{1000 * f['step_time_s']:.0f} ms per step{early} and "
                 f"{1000 * f['eval_s_per_image']:.2f} ms per test image; loading and "
                 f"the probe took {spent_s:.0f} s")
    # an environment that forces an older BLAS kernel: say so where the plan is read
    warning = sysinfo.kernel_warning() if backend.normalize_device(cfg.device) == "cpu" else None
    return line if warning is None else line + "\n" + warning


def used_line(cfg, used_s, steps, last_eval_s):
    budget_s = cfg.time_budget * 60
    return (f"time budget: used {used_s:.0f} s of {budget_s:.0f} s ({100 * used_s / budget_s:.1f}%):"
            f" {steps} steps, the last evaluation {last_eval_s:.1f} s")
