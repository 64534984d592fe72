"""How the budget recipe was chosen: 15-minute runs that differ in one setting,
each evaluated four ways afterwards (EMA or live weights, with or without flip TTA).

    minires train --data D --time-budget 15 --out runs/expA --batch-size 256 --lr 0.4 --ema 0.99 --early-crop 0
    minires train --data D --time-budget 15 --out runs/expB --batch-size 128 --lr 0.2 --early-crop 0
    minires train --data D --time-budget 15 --out runs/expC        # the recipe itself
    python -m benchmarks.bench_recipe_ablation runs/expA runs/expB runs/expC

Run each with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` (see bench_accuracy).
The runs' own settings, steps, epochs and budget use come from their
config.json; the four accuracies from ``minires eval`` on last.ckpt.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.bench_accuracy import DEFAULT_DATA, evaluate_views  # noqa: E402
from benchmarks.machine import write_results  # noqa: E402

SETTINGS = ("batch_size", "lr", "anneal", "no_decay_bn_bias", "ema", "tta", "early_crop",
            "early_fraction", "label_smoothing", "seed", "time_budget")


def describe(run_dir, data):
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    fitted = cfg["fitted"]
    steps = fitted.get("logged_steps") or fitted["total_steps"]
    return {"run": os.path.basename(os.path.normpath(run_dir)),
            "settings": {k: cfg.get(k) for k in SETTINGS},
            "steps": fitted["total_steps"], "epochs": round(fitted["total_steps"] / fitted["steps_per_epoch"], 1),
            "budget_used_s": fitted.get("used_s"), "logged_steps": steps,
            "views": evaluate_views(run_dir, data, cfg)}


def markdown(rows):
    out = ["| run | batch, lr | EMA | early crop | steps (epochs) | live weights | + flip TTA | "
           "EMA weights | EMA + flip TTA |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        s, v = r["settings"], r["views"]
        pct = lambda k: f"{100 * v[k]:.2f}%" if k in v else ""  # noqa: E731
        crop = f"{s['early_crop']} px, first {s['early_fraction']:g}" if s["early_crop"] else "none"
        out.append(f"| {r['run']} | {s['batch_size']}, {s['lr']:g} | {s['ema'] or 'none'} | {crop} | "
                   f"{r['steps']} ({r['epochs']}) | {pct('no-ema, tta none')} | "
                   f"{pct('no-ema, tta flip')} | {pct('ema, tta none')} | {pct('ema, tta flip')} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders of minires train --time-budget")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--results", default="bench_budget15_ablation")
    args = ap.parse_args(argv)
    rows = [describe(r, args.data) for r in args.runs]
    md = ("# The budget recipe's ablation: 15-minute runs, evaluated four ways\n\n" + markdown(rows)
          + "\n\nEach run's settings are in the JSON; the commands are in "
          "benchmarks/bench_recipe_ablation.py.\n")
    print(md)
    write_results(args.results, rows, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
