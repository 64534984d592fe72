"""The training loop's speed: images per second in real epochs, minires vs torch.

    python -m benchmarks.bench_loop --budget 10          # runs the pair, then the table
    python -m benchmarks.bench_loop --from bench_budget15 # the table from runs already made

A bare step (bench_speed) leaves out what a real run adds: the loader's
thread (decode-free here: the JPEGs are decoded once and cached), the
augmentation, the accuracy count, the schedule, the budget's pace checks.
So this reads the per-epoch clocks of real runs made by bench_accuracy:
``minires train --time-budget B`` as a user runs it, and torch's loop with
the same recipe, loader and augmentation, one after the other, each in its
own process.  The budget recipe runs its first epochs on 24-pixel windows
and the rest at full size, so there are two rows.  An epoch's images per
second = its images / the time between the ends of it and the epoch before.
The first epoch (setup, warm-up) and the last (partial, with the final
evaluation) are left out; medians over the rest.

Run with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` (see bench_speed).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.machine import RESULTS_DIR, write_results  # noqa: E402


def epoch_rates(run):
    """(window epochs' images/s, full-size epochs' images/s) of one run."""
    fitted, epochs = run["fitted"], run["epochs"]
    per_epoch, batch = fitted["steps_per_epoch"], run["config"]["batch_size"]
    windows, full = [], []
    for prev, cur in zip(epochs[1:-2], epochs[2:-1]):  # not the first, not the last
        rate = (cur["step"] - prev["step"]) * batch / (cur["elapsed_s"] - prev["elapsed_s"])
        (windows if cur["epoch"] <= fitted.get("early_epochs", 0) else full).append(rate)
    if not windows and not full:
        raise SystemExit("bench_loop: the run has too few epochs (a longer --budget, please)")
    assert per_epoch > 0
    return windows, full


def table(runs, source):
    rows, out = [], []
    for name, run in sorted(runs.items()):
        windows, full = epoch_rates(run)
        rows.append({"run": name, "framework": run["framework"],
                     "window_images_per_s": statistics.median(windows) if windows else None,
                     "full_images_per_s": statistics.median(full) if full else None,
                     "window_epochs": len(windows), "full_epochs": len(full)})
    out += ["| run | 24-px window epochs: images/s | full-size (32 px) epochs: images/s |",
            "|---|---:|---:|"]
    for r in rows:
        fmt = lambda v, n: "-" if v is None else f"{v:.0f} (median of {n})"  # noqa: E731
        out.append(f"| {r['run']} | {fmt(r['window_images_per_s'], r['window_epochs'])} | "
                   f"{fmt(r['full_images_per_s'], r['full_epochs'])} |")
    ratios = []
    for seed_run in (r for r in rows if r["framework"] == "minires"):
        torch_run = next((r for r in rows if r["framework"] == "torch"), None)
        if torch_run is None:
            continue
        for key, label in (("window_images_per_s", "windows"), ("full_images_per_s", "full size")):
            if seed_run[key] and torch_run[key]:
                ratios.append(f"{seed_run['run']} vs {torch_run['run']}, {label}: "
                              f"torch/minires images per second = {torch_run[key] / seed_run[key]:.2f}")
    return rows, "\n".join(out + [""] + [f"* {r}" for r in ratios]) + \
        f"\n\nFrom the per-epoch clocks of `{source}.json` (see benchmarks/bench_loop.py).\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=10.0, help="minutes per framework")
    ap.add_argument("--from", dest="source", default=None,
                    help="read this results file of bench_accuracy instead of running")
    ap.add_argument("--data", default=None)
    args = ap.parse_args(argv)
    source = args.source or "bench_loop_runs"
    if args.source is None:
        for framework in ("minires", "torch"):
            cmd = [sys.executable, "-m", "benchmarks.bench_accuracy", "--budget", str(args.budget),
                   "--seed", "0", "--results", source, "--framework", framework,
                   *(["--data", args.data] if args.data else [])]
            subprocess.run(cmd, cwd=ROOT, check=True)
    data = json.load(open(os.path.join(RESULTS_DIR, f"{source}.json")))
    rows, md = table(data["runs"], source)
    print(md)
    write_results("bench_loop", rows,
                  "# The training loop: images per second, minires vs torch\n\n" + md,
                  machine=data.get("machine"), extra={"source": f"{source}.json"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
