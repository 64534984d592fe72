"""The degradation experiment of He et al. 2015 (Fig. 6), at CPU scale.

plain20, plain56, resnet20 and resnet56 (option-A shortcuts) are trained with
the same recipe for the same number of optimiser steps (not the same
wall-clock time) on CIFAR-10, and their training and test errors are
recorded along the way.  The paper's qualitative result is what to check:
plain-56 ends with HIGHER training error than plain-20 (degradation), while
resnet-56's is at most resnet-20's.

Recipe (He et al. sec. 4.2, scaled down): SGD, momentum 0.9, weight decay
1e-4, lr 0.1 divided by 10 at 50% and 75% of the steps, after a linear
warm-up from 0.01 over the first 10% (He et al. warm ResNet-110 up at 0.01;
here, at 0.1 from the first step ResNet-56's loss rose to 14 within three
steps and it was back at chance after 50, see
results/gradflow_lr0.1.md), batch 64 (paper: 128), pad-4 random crops and
flips, no label smoothing, float32, seed 0 for every model (so all see the
same batches).  Errors are measured in eval mode
on FIXED class-balanced subsets: ``--eval-images`` training images (no
augmentation) and as many test images, every ``--eval-every`` steps (1000
images, every 100 steps, and at the last step).

Budget: by default the number of steps is fitted to ``--time-budget``
minutes (55) from a short timing probe of every model; ``--steps N`` fixes
it instead.  ``--plan`` only probes and prints the estimate.  Results are
rewritten after every model (``--resume`` keeps the finished models of an
earlier run with identical settings).  Writes benchmarks/results/<name>.json,
.md and .png (name: degradation).

    python -m benchmarks.bench_degradation                 # ~60 min on 2 cores
    python -m benchmarks.bench_degradation --plan          # timing estimate only
    python -m benchmarks.bench_degradation --steps 10 --subset 2000 --eval-images 200 \\
        --eval-every 5 --name degradation_smoke             # smoke test
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.machine import RESULTS_DIR, machine_info, write_results  # noqa: E402
import minires  # noqa: E402
from minires import backend, nn, optim  # noqa: E402
from minires.data import BatchLoader, load_cifar10  # noqa: E402
from minires.gradflow import build_cifar_model  # noqa: E402
from minires.data import balanced_sample  # noqa: E402
from minires.train import evaluate, train_step  # noqa: E402

MODELS = "plain20,plain56,resnet20,resnet56"
SETTING_KEYS = ("models", "steps", "batch_size", "subset", "eval_every", "eval_images", "lr",
                "warmup", "momentum", "weight_decay", "milestones", "seed", "data")


class WarmupMultiStep:
    """The lr of the step about to run: linear warm-up from lr/10 to lr over
    the first ``warmup`` fraction of the steps, then lr, divided by 10 at each
    milestone fraction.  Stepped once per optimiser step, like minires.optim's."""

    def __init__(self, opt, lr, total_steps, warmup, milestones):
        self.opt, self.lr, self.t = opt, lr, 0
        self.warm = int(warmup * total_steps)
        self.milestones = [int(f * total_steps) for f in milestones]
        self._apply()

    def lr_at(self, t):
        if t < self.warm:
            return self.lr * (0.1 + 0.9 * t / self.warm)
        return self.lr * 0.1 ** sum(t >= m for m in self.milestones)

    def _apply(self):
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.t)

    def step(self):
        self.t += 1
        self._apply()


def default_data():
    return os.environ.get("MINIRES_DATA") or os.path.join(REPO, "..", "shared", "datasets",
                                                          "cifar10-jpeg")


def load(args):
    """Training images (all, or a class-balanced ``--subset``), and the fixed
    class-balanced evaluation subsets of the training and test splits."""
    tr_x, tr_y = load_cifar10(args.data, split="train")[:2]
    te_x, te_y = load_cifar10(args.data, split="test")[:2]
    if args.subset:
        keep = np.sort(balanced_sample(tr_y, args.subset, args.seed))
        tr_x, tr_y = tr_x[keep], tr_y[keep]
    ev_tr = balanced_sample(tr_y, args.eval_images, args.seed + 1)
    ev_te = balanced_sample(te_y, args.eval_images, args.seed + 2)
    return (tr_x, tr_y), (tr_x[ev_tr], tr_y[ev_tr]), (te_x[ev_te], te_y[ev_te])


def make_run(name, args, total_steps):
    minires.manual_seed(args.seed)  # same init stream, batch order and augmentation per model
    model = build_cifar_model(name)
    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                    weight_decay=args.weight_decay)
    sched = WarmupMultiStep(opt, args.lr, total_steps, args.warmup, args.milestones)
    return model, opt, sched, nn.CrossEntropyLoss()


def batches(images, labels, batch_size):
    """Augmented training batches, epoch after epoch, forever."""
    loader = BatchLoader(images, labels, batch_size, shuffle=True, augment=True)
    while True:
        yield from loader


def probe(args, train):
    """Seconds per training step of every model (median of 3 after 1 warm-up),
    and seconds per evaluated image (for resnet56, the slowest to evaluate)."""
    times, x = {}, None
    for name in args.models:
        model, opt, sched, crit = make_run(name, args, 1000)
        gen = batches(*train, args.batch_size)
        t = []
        for _ in range(4):
            x, y = next(gen)
            t0 = time.perf_counter()
            float(train_step(model, crit, opt, sched, x, y)[0])
            t.append(time.perf_counter() - t0)
        times[name] = float(np.median(t[1:]))
        model.eval()
        t0 = time.perf_counter()
        with minires.no_grad():
            model(x)
        times[name + "_eval_per_image"] = (time.perf_counter() - t0) / len(x)
    return times


def fit_steps(args, times):
    per_step = sum(times[m] for m in args.models)
    eval_per_point = 2 * args.eval_images * sum(times[m + "_eval_per_image"] for m in args.models)
    budget = args.time_budget * 60 * 0.95  # 5% for loading, logging and noise
    # steps * per_step + (steps / eval_every + 1) * eval_per_point <= budget
    steps = (budget - eval_per_point) / (per_step + eval_per_point / args.eval_every)
    return max(10, int(steps) // 10 * 10)  # the last step is always evaluated too


def train_one(name, args, train, ev_train, ev_test, log):
    model, opt, sched, crit = make_run(name, args, args.steps)
    gen, curve, window = batches(*train, args.batch_size), [], []
    t_start = time.perf_counter()

    def record(step):
        tl, ta = evaluate(model, *ev_train)
        vl, va = evaluate(model, *ev_test)
        batch_err = float(np.mean(window)) if window else None
        curve.append({"step": step, "train_error": 1 - ta, "test_error": 1 - va,
                      "train_loss": tl, "test_loss": vl, "batch_error": batch_err,
                      "lr": opt.param_groups[0]["lr"], "elapsed_s": time.perf_counter() - t_start})
        window.clear()
        log(f"  {name} step {step:5d}: train error {100 * (1 - ta):5.1f}%  test error "
            f"{100 * (1 - va):5.1f}%  ({curve[-1]['elapsed_s']:.0f} s)")

    record(0)
    for step in range(1, args.steps + 1):
        x, y = next(gen)
        loss, logits = train_step(model, crit, opt, sched, x, y)
        if not math.isfinite(float(loss)):
            raise FloatingPointError(f"{name}: non-finite loss at step {step}")
        window.append(float((backend.to_numpy(logits).argmax(1) != backend.to_numpy(y)).mean()))
        if step % args.eval_every == 0 or step == args.steps:
            record(step)
    seconds = time.perf_counter() - t_start
    return {"model": name, "curve": curve, "seconds": seconds,
            "final_train_error": curve[-1]["train_error"], "final_test_error": curve[-1]["test_error"]}


def verdicts(rows):
    """The paper's two qualitative claims, on the final training errors."""
    e = {r["model"]: r["final_train_error"] for r in rows}
    out = []
    if "plain20" in e and "plain56" in e:
        holds = e["plain56"] > e["plain20"]
        out.append(f"plain-56 ends with higher training error than plain-20 "
                   f"({100 * e['plain56']:.1f}% vs {100 * e['plain20']:.1f}%): "
                   f"{'HOLDS' if holds else 'DOES NOT HOLD'} in this run")
    if "resnet20" in e and "resnet56" in e:
        holds = e["resnet56"] <= e["resnet20"]
        out.append(f"resnet-56's final training error is at most resnet-20's "
                   f"({100 * e['resnet56']:.1f}% vs {100 * e['resnet20']:.1f}%): "
                   f"{'HOLDS' if holds else 'DOES NOT HOLD'} in this run")
    return out


def markdown(rows, settings, extra):
    lines = ["# Degradation (He et al. 2015, Fig. 6) at CPU scale", "",
             f"Same recipe and the same {settings['steps']} optimiser steps for every model; "
             f"batch {settings['batch_size']}, lr {settings['lr']} (linear warm-up from "
             f"{settings['lr'] / 10:g} over the first {int(100 * settings['warmup'])}% of the "
             f"steps, /10 at "
             f"{', '.join(f'{int(100 * f)}%' for f in settings['milestones'])} of the steps), "
             f"momentum {settings['momentum']}, weight decay {settings['weight_decay']}, "
             f"augmentation (crop + flip), seed {settings['seed']}.  Training set: "
             f"{settings['train_images']} images "
             f"({'class-balanced subset' if settings['subset'] else 'the whole split'}); errors in "
             f"eval mode on fixed class-balanced subsets of {settings['eval_images']} training and "
             f"{settings['eval_images']} test images, every {settings['eval_every']} steps.  "
             f"Budget: {extra['budget']}.", "",
             "| model | final training error | final test error | lowest test error | "
             "wall-clock (s) | s/step incl. evals |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {100 * r['final_train_error']:.2f}% | "
                     f"{100 * r['final_test_error']:.2f}% | "
                     f"{100 * min(c['test_error'] for c in r['curve']):.2f}% | {r['seconds']:.0f} | "
                     f"{r['seconds'] / settings['steps']:.2f} |")
    lines += ["", "Training error (%) at each evaluation:", "",
              "| step | " + " | ".join(r["model"] for r in rows) + " |",
              "|---:|" + "---:|" * len(rows)]
    for i, c in enumerate(rows[0]["curve"]):
        lines.append(f"| {c['step']} | " + " | ".join(
            f"{100 * r['curve'][i]['train_error']:.1f}" if i < len(r["curve"]) else "-"
            for r in rows) + " |")
    lines += ["", "## The paper's claims in this run", ""] + ["- " + v for v in verdicts(rows)]
    return "\n".join(lines)


def plot(rows, path, steps):
    from minires.plot import require_matplotlib
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, family in zip(axes, ("plain", "resnet")):
        for i, r in enumerate(x for x in rows if x["model"].startswith(family)):
            s = [c["step"] for c in r["curve"]]
            ax.plot(s, [100 * c["train_error"] for c in r["curve"]], "--", lw=1, color=f"C{i}",
                    label=f"{r['model']} training error")
            ax.plot(s, [100 * c["test_error"] for c in r["curve"]], "-", lw=2.2, color=f"C{i}",
                    label=f"{r['model']} test error")
        ax.set_title(f"{family} nets" + (" (option-A shortcuts)" if family == "resnet" else ""))
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
        if ax.lines:  # a partial run may not have reached this family yet
            ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    fig.suptitle(f"CIFAR-10, {steps} steps each: thin dashed = training error, bold = test "
                 f"error (eval mode, fixed subsets)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=MODELS)
    p.add_argument("--data", default=default_data(), help="CIFAR-10 folder (default: "
                   "$MINIRES_DATA, else ../shared/datasets/cifar10-jpeg)")
    p.add_argument("--steps", type=int, help="optimiser steps per model (default: fitted to "
                   "--time-budget)")
    p.add_argument("--time-budget", type=float, default=55.0, metavar="MINUTES",
                   help="fit --steps so that all models together take about this long (55)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--subset", type=int, help="train on this many class-balanced images "
                                              "(default: all 50,000)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--warmup", type=float, default=0.1,
                   help="fraction of the steps over which lr rises linearly from lr/10 (0.1)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--milestones", default="0.5,0.75", help="lr /10 at these fractions of steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plan", action="store_true", help="probe step times, print the plan, stop")
    p.add_argument("--resume", action="store_true",
                   help="keep finished models of an earlier run with the same settings")
    p.add_argument("--name", default="degradation", help="results file stem")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.milestones = [float(f) for f in args.milestones.split(",") if f.strip()]
    log = lambda s: print(s, flush=True)  # noqa: E731
    machine = machine_info()
    train, ev_train, ev_test = load(args)
    times = None
    if args.steps is None or args.plan:
        times = probe(args, train)
        fitted = fit_steps(args, times)
        log("probe (s/step at batch %d): %s" % (args.batch_size, ", ".join(
            f"{m} {times[m]:.2f}" for m in args.models)))
        log(f"{fitted} steps per model fit {args.time_budget:g} minutes "
            f"({fitted * args.batch_size / len(train[1]):.2f} epochs of {len(train[1])} images)")
        if args.plan:
            return 0
        args.steps = fitted
    budget = (f"{args.steps} steps per model, fitted to {args.time_budget:g} minutes from a timing "
              f"probe" if times else f"{args.steps} steps per model (--steps)")
    settings = {k: getattr(args, k) for k in SETTING_KEYS}
    settings["data"] = os.path.abspath(args.data)
    settings["train_images"] = int(len(train[1]))
    json_path = RESULTS_DIR / f"{args.name}.json"
    rows = []
    if args.resume and json_path.exists():
        old = json.loads(json_path.read_text())
        if old.get("settings") == settings:
            rows = [r for r in old["rows"] if r["model"] in args.models]
            log(f"resuming: {[r['model'] for r in rows]} already done")
    t0 = time.perf_counter()
    for name in args.models:
        if any(r["model"] == name for r in rows):
            continue
        log(f"{name}: {args.steps} steps")
        rows.append(train_one(name, args, train, ev_train, ev_test, log))
        rows.sort(key=lambda r: args.models.index(r["model"]))
        extra = {"settings": settings, "probe_s_per_step": times, "budget": budget,
                 "complete": len(rows) == len(args.models),
                 "total_seconds": time.perf_counter() - t0}
        write_results(args.name, rows, markdown(rows, settings, extra), machine, extra=extra)
        plot(rows, str(RESULTS_DIR / f"{args.name}.png"), args.steps)
    for v in verdicts(rows):
        log(v)
    log(f"wrote {RESULTS_DIR / args.name}.json, .md and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
