"""The chapter's exercises, answered by code (minires/exercises.py), at full size.

1. Parameters of ResNet-18's head (AdaptiveAvgPool2d + Linear(512, 1000))
   against AlexNet's classifier, from ``minires.summary`` at 3x224x224.
2. Identity by default under weight decay: a 10-block residual MLP trained
   with and without weight decay on a target a 2-block net represents; per
   block ``||F(X)|| / ||X||`` and the test MSE with that block's residual
   path removed.  About 2 minutes on 2 cores.

Writes benchmarks/results/exercises.json, .md and .png.

    python -m benchmarks.bench_exercises [--steps 3000] [--blocks 10] [--weight-decay 5e-3]
"""
import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.machine import RESULTS_DIR, machine_info, write_results  # noqa: E402
from minires.exercises import head_parameters, identity_by_default  # noqa: E402


def heads_markdown(heads):
    r, a = heads["resnet18_head"], heads["alexnet_classifier"]
    lines = ["## 1. Classification heads (`minires.summary`, input 3x224x224)", "",
             "| model | head layers | head parameters | whole model | head share |",
             "|---|---|---:|---:|---:|"]
    for name, h in (("ResNet-18", r), ("AlexNet", a)):
        layers = ", ".join(f"{k} {v:,}" for k, v in h["layers"].items()
                           if v or k == "avgpool")  # no dropout/ReLU rows
        lines.append(f"| {name} | {layers} | {h['total']:,} | {h['model_total']:,} | "
                     f"{100 * h['total'] / h['model_total']:.1f}% |")
    lines += ["", f"AlexNet's classifier holds {a['total'] / r['total']:.0f}x the parameters of "
              f"ResNet-18's head: global average pooling leaves 512 numbers per image, so one "
              f"Linear(512, 1000) suffices, where AlexNet flattens 256x6x6 = 9,216 numbers into "
              f"two 4,096-wide hidden layers.", ""]
    return lines


def identity_markdown(res):
    s, runs = res["settings"], res["runs"]
    deep = [r for r in runs if r["n_blocks"] == s["n_blocks"]]
    ref = [r for r in runs if r["n_blocks"] != s["n_blocks"]]
    lines = ["## 2. Identity by default under weight decay", "",
             f"Target: a {s['teacher_blocks']}-block residual function of {s['d_in']} inputs "
             f"(width {s['width']}), scaled to unit variance.  Student: Linear+ReLU stem, "
             f"{s['n_blocks']} ResBlockMLP({s['width']}), Linear head; SGD lr {s['lr']}, "
             f"momentum {s['momentum']}, batch {s['batch_size']}, {s['steps']} steps, MSE; "
             f"{s['n_train']} training and {s['n_test']} test points; the same initial weights "
             f"and batches for every weight decay.  Ratio = ‖F(X)‖/‖X‖ of each block on the test "
             f"points (eval mode).  'Without block' = test MSE with that block's residual path "
             f"removed.", ""]
    head = "| block | ratio at init |" + "".join(
        f" ratio, wd {r['weight_decay']:g} | test MSE without block, wd {r['weight_decay']:g} |"
        for r in deep)
    lines += [head, "|" + "---:|" * (2 + 2 * len(deep))]
    for b in range(s["n_blocks"]):
        lines.append(f"| {b + 1} | {deep[0]['ratio_init'][b]:.3f} |" + "".join(
            f" {r['ratio_trained'][b]:.3f} | {r['test_mse_without_block'][b]:.4f} |" for r in deep))
    lines += ["", "| run | test MSE | mean ratio | min ratio | max ratio |", "|---|---:|---:|---:|---:|"]
    for r in deep + ref:
        t = r["ratio_trained"]
        lines.append(f"| {r['n_blocks']} blocks, wd {r['weight_decay']:g} | {r['test_mse']:.4f} | "
                     f"{sum(t) / len(t):.3f} | {min(t):.3f} | {max(t):.3f} |")
    return lines + [""]


def plot(res, path):
    from minires.plot import require_matplotlib
    plt = require_matplotlib()
    s = res["settings"]
    deep = [r for r in res["runs"] if r["n_blocks"] == s["n_blocks"]]
    blocks = list(range(1, s["n_blocks"] + 1))
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.6))
    ax[0].plot(blocks, deep[0]["ratio_init"], "k:o", ms=3, label="at initialisation")
    for i, r in enumerate(deep):
        lab = f"trained, weight decay {r['weight_decay']:g}"
        ax[0].plot(blocks, r["ratio_trained"], "o-", color=f"C{i}", label=lab)
        ax[1].plot(blocks, r["test_mse_without_block"], "o-", color=f"C{i}", label=lab)
        ax[1].axhline(r["test_mse"], color=f"C{i}", ls="--", lw=1)
        ax[2].plot([100 * (k + 1) for k in range(len(r["loss_curve"]))], r["loss_curve"],
                   color=f"C{i}", label=lab)
    ax[0].set_title("‖F(X)‖ / ‖X‖ per residual block")
    ax[1].set_title("test MSE with one block's residual path removed\n(dashed: the full net)")
    ax[2].set_title("training MSE (mean of each 100 steps)")
    for a in ax:
        a.set_yscale("log")
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8)
    for a in ax[:2]:
        a.set_xticks(blocks)
    ax[0].set_xlabel("block")
    ax[1].set_xlabel("block removed")
    ax[2].set_xlabel("step")
    fig.suptitle(f"{s['n_blocks']} ResBlockMLP on a {s['teacher_blocks']}-block target: "
                 f"identity by default under weight decay")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--weight-decay", type=float, default=5e-3,
                   help="the decayed run's weight decay (the control has 0)")
    p.add_argument("--name", default="exercises", help="results file stem (default exercises)")
    args = p.parse_args(argv)
    machine = machine_info()
    t0 = time.perf_counter()
    heads = head_parameters((3, 224, 224))
    res = identity_by_default(args.blocks, (0.0, args.weight_decay), args.steps, log=print)
    seconds = time.perf_counter() - t0
    md = (["# The chapter's exercises", "", f"`python -m benchmarks.bench_exercises --steps "
           f"{args.steps} --blocks {args.blocks} --weight-decay {args.weight_decay:g}` "
           f"({seconds:.0f} s)", ""] + heads_markdown(heads) + identity_markdown(res))
    png = plot(res, str(RESULTS_DIR / f"{args.name}.png"))
    paths = write_results(args.name, res["runs"], "\n".join(md), machine,
                          extra={"heads": heads, "settings": res["settings"], "seconds": seconds})
    print("\n".join(md))
    print("wrote", png, *paths)


if __name__ == "__main__":
    main()
