"""Time to accuracy on CPU: ResNet-20 on the full CIFAR-10 JPEG set within a budget.

    python -m benchmarks.bench_accuracy --budget 15 --seed 0 --results bench_budget15
    python -m benchmarks.bench_accuracy --budget 15 --seed 0 --results bench_budget15 --framework torch
    python -m benchmarks.bench_accuracy --budget 60 --results bench_accuracy [--framework torch]

Run each with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` (a user's own
machine sets neither; the kernel threadpoolctl reports is recorded).

minires runs as a user runs it: ``minires train --data D --time-budget M``
in a subprocess (the README's quick start, recipe ``budget`` by default),
its process timed from start to exit.  Afterwards, outside the budget, the
run's last checkpoint is evaluated four ways (EMA or live weights, with or
without flip TTA), which says what each of the two gave.

torch runs *the same recipe* in this process (one framework per process):
the network of tests/models/torch_cifar_refs.py from the same initial
weights, the same loader and augmentation, torch's SGD with the same
parameter groups and minires's one-cycle closed form, the same EMA (with
its batch-norm recalibration) and flip TTA, and the same budget logic
(``minires.budget``: a probe of its own step, steps that fit, refits while
it runs).  Results go to benchmarks/results/<results>.json under
``<framework>-seed<seed>``, so runs are made one after the other.
"""
import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.machine import machine_info, write_results, RESULTS_DIR  # noqa: E402

DEFAULT_DATA = os.environ.get("MINIRES_DATA", os.path.join(ROOT, "..", "shared", "datasets",
                                                           "cifar10-jpeg"))


def evaluate_views(out, data, cfg):
    """Test accuracy of a run's last checkpoint four ways: EMA or live weights
    (EMA only when the run kept one), with or without flip TTA."""
    views = {}
    for ema in ("--ema", "--no-ema"):
        for tta in ("flip", "none"):
            if ema == "--ema" and not cfg["ema"]:
                continue
            r = subprocess.run([sys.executable, "-m", "minires", "eval", "--checkpoint",
                                os.path.join(out, "last.ckpt"), "--data", data, "--json",
                                ema, "--tta", tta], capture_output=True, text=True, check=True)
            views[f"{ema.strip('-')}, tta {tta}"] = json.loads(r.stdout)["accuracy"]
    return views


def run_minires(args):
    out = os.path.join(args.out, f"minires-{args.results}-seed{args.seed}")
    if os.path.exists(out):
        import shutil
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "minires", "train", "--data", args.data, "--time-budget",
           str(args.budget), "--out", out, "--seed", str(args.seed), "--no-progress",
           *(["--recipe", args.recipe] if args.recipe else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(proc.stdout + proc.stderr, flush=True)
    if proc.returncode:
        raise SystemExit(f"minires train failed ({proc.returncode})")
    cfg = json.load(open(os.path.join(out, "config.json")))
    hist = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    views = evaluate_views(out, args.data, cfg)
    return {"framework": "minires", "command": " ".join(cmd[2:]), "wall_s": wall,
            "process_wall_s": wall, "config": {k: v for k, v in cfg.items() if k != "fitted"},
            "fitted": cfg["fitted"], "final_test_acc": hist[-1]["test_acc"], "views": views,
            "epochs": [{k: v for k, v in h.items() if k != "loss_curve"} for h in hist]}


def run_torch(args):
    import torch
    import torch.nn.functional as F
    from minires import budget, manual_seed, optim as mr_optim
    from minires.config import TrainConfig
    from minires.data import BatchLoader, load_cifar10, normalize
    from minires.models import resnet20
    from tests.helpers import copy_params_to_torch
    from tests.models.torch_cifar_refs import TorchCifarResNet
    from minires.budget import process_start
    t_start = process_start()
    torch.set_num_threads(os.cpu_count())
    cfg = TrainConfig.from_recipe(args.recipe or "budget", time_budget=args.budget,
                                  seed=args.seed)
    xtr, ytr = load_cifar10(args.data, "train")[:2]
    xte, yte = load_cifar10(args.data, "test")[:2]
    manual_seed(cfg.seed)  # as the Trainer: the seed, then the model, then the loader
    model = TorchCifarResNet(20)
    copy_params_to_torch(resnet20(), model)  # the same initial weights as minires's run
    bs = cfg.batch_size

    def groups(m):
        if not cfg.no_decay_bn_bias:
            return [{"params": list(m.parameters()), "weight_decay": cfg.weight_decay}]
        return [{"params": [p for p in m.parameters() if p.ndim >= 2],
                 "weight_decay": cfg.weight_decay},
                {"params": [p for p in m.parameters() if p.ndim < 2], "weight_decay": 0.0}]

    opt = torch.optim.SGD(groups(model), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov)
    steps_per_epoch = math.ceil(len(ytr) / bs)
    # the probe, as minires's: a throwaway copy, 2 + 8 steps on one batch, eval of 500 images
    def probe_step(size):
        probe = copy.deepcopy(model)
        popt = torch.optim.SGD(groups(probe), lr=0.01, momentum=0.9, nesterov=True)
        xb = torch.from_numpy(normalize(xtr[:bs, :size, :size]))
        yb = torch.from_numpy(ytr[:bs])
        times = []
        for _ in range(10):
            t = time.perf_counter()
            popt.zero_grad()
            F.cross_entropy(probe(xb), yb, label_smoothing=cfg.label_smoothing).backward()
            popt.step()
            times.append(time.perf_counter() - t)
        return float(np.median(times[2:])), probe
    step_s, probe = probe_step(32)
    early_s = probe_step(cfg.early_crop)[0] if cfg.early_crop else None
    xe = torch.from_numpy(normalize(xte[:cfg.eval_batch_size]))
    probe.eval()
    with torch.no_grad():
        ev = []
        for _ in range(2):
            t = time.perf_counter()
            probe(xe)
            ev.append(time.perf_counter() - t)
    eval_per_image = min(ev) / len(xe)
    fitted = budget.fit_schedule(cfg, steps_per_epoch, len(yte), step_s, eval_per_image,
                                 spent_s=time.perf_counter() - t_start, early_step_time=early_s)
    total = fitted["total_steps"]
    print(f"torch plan: {total} steps; probe {1000 * step_s:.0f} ms per step", flush=True)

    # minires's one-cycle closed form drives torch's lr and momentum (a refit rebuilds it)
    shadow = types.SimpleNamespace(param_groups=[{"lr": cfg.lr, "momentum": cfg.momentum}])

    def schedule(total, at):
        s = mr_optim.OneCycleLR(shadow, max_lr=cfg.lr, total_steps=total, pct_start=cfg.pct_start,
                                anneal_strategy=cfg.anneal)
        s.last_epoch = at
        s._apply()
        return s

    def apply():
        for g in opt.param_groups:
            g["lr"], g["momentum"] = shadow.param_groups[0]["lr"], shadow.param_groups[0]["momentum"]

    sched = schedule(total, 0)
    apply()
    ema = copy.deepcopy(model).eval() if cfg.ema else None
    updates = 0
    step, epoch, hist, refits = 0, 0, [], 0
    eval_per_image *= budget.PROBE_EVAL_FACTOR
    clock = budget.Pace(time.perf_counter, step)
    while step < total:
        model.train()
        crop = ({"padding": 0, "crop_size": cfg.early_crop}
                if epoch < fitted["early_epochs"] else {})
        loader = BatchLoader(xtr, ytr, bs, shuffle=True, augment=cfg.augment, **crop)
        if epoch and epoch == fitted["early_epochs"]:
            clock = budget.Pace(time.perf_counter, step)  # full-size steps: a new pace
        tl = tc = n = 0
        for i, (x, y) in enumerate(loader):
            if step >= total:
                break
            x, y = torch.from_numpy(x), torch.from_numpy(y)
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            apply()
            step += 1
            if ema is not None:
                d = min(cfg.ema, (1 + updates) / (10 + updates))
                updates += 1
                with torch.no_grad():
                    for e, p in zip(ema.state_dict().values(), model.state_dict().values()):
                        if e.dtype.is_floating_point:
                            e.add_((p - e) * (1 - d))
                        else:
                            e.copy_(p)
            tl += float(loss) * len(y)
            tc += int((out.argmax(1) == y).sum())
            n += len(y)
            last = i == len(loader) - 1 or step >= total
            if step % budget.refit_every(fitted) == 0 or last:  # minires's refits, as train.py
                pace, now = clock.look(step)
                if pace is not None:
                    fitted["total_steps"] = total
                    new = budget.refitted_total(cfg, fitted, step, pace,
                                                t_start + cfg.time_budget * 60 - now, len(yte),
                                                eval_per_image)
                    if new != total:
                        total, refits = new, refits + 1
                        if total > step:
                            sched = schedule(total, step)
                            apply()
        t_trained = time.perf_counter()
        epoch += 1
        row = {"epoch": epoch, "step": step, "train_loss": tl / max(n, 1),
               "train_acc": tc / max(n, 1), "test_acc": None,
               "elapsed_s": time.perf_counter() - t_start}
        final = step >= total
        if final or (cfg.eval_every and epoch % cfg.eval_every == 0):
            t_eval = time.perf_counter()
            net = ema if ema is not None else model
            if final and ema is not None:  # recalibrate the EMA's batch norm, as minires does
                norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
                for m in norms:
                    m.reset_running_stats()
                    m.momentum = None
                net.train()
                rng = np.random.default_rng([cfg.seed, 1])
                rl = BatchLoader(xtr, ytr, bs, shuffle=True, augment=cfg.augment, rng=rng,
                                 augment_rng=rng)
                with torch.no_grad():
                    for k, (x, _) in zip(range(budget.RECALIBRATION_BATCHES), rl):
                        net(torch.from_numpy(x))
                for m in norms:
                    m.momentum = 0.1
            net.eval()
            vc = 0
            with torch.no_grad():
                for i in range(0, len(yte), cfg.eval_batch_size):
                    x = torch.from_numpy(normalize(xte[i:i + cfg.eval_batch_size]))
                    out = net(x)
                    if cfg.tta == "flip":
                        out = (out + net(torch.flip(x, dims=[3]))) / 2
                    vc += int((out.argmax(1).numpy() == yte[i:i + cfg.eval_batch_size]).sum())
            row["test_acc"] = vc / len(yte)
            views = 2 if cfg.tta == "flip" else 1
            eval_per_image = (time.perf_counter() - t_eval) / (len(yte) * views)
        hist.append(row)
        clock.pause(time.perf_counter() - t_trained)  # evaluations are not steps
        print(f"torch epoch {epoch} ({step} steps) test acc {row['test_acc']}", flush=True)
    wall = time.perf_counter() - t_start
    fitted.update(total_steps=total, epochs=epoch, refits=refits, used_s=wall)
    return {"framework": "torch", "wall_s": wall, "process_wall_s": None,
            "config": {k: v for k, v in vars(cfg).items() if k != "fitted"}, "fitted": fitted,
            "final_test_acc": hist[-1]["test_acc"], "epochs": hist}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--budget", type=float, default=15.0, help="minutes")
    ap.add_argument("--framework", choices=["minires", "torch"], default="minires")
    ap.add_argument("--recipe", default=None, help="default: minires's default (budget)")
    ap.add_argument("--results", default="bench_budget15", help="results file name")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_accuracy"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    load_start = list(os.getloadavg())
    res = (run_minires if args.framework == "minires" else run_torch)(args)
    res.update(budget_min=args.budget, seed=args.seed, finished=time.strftime("%Y-%m-%d %H:%M UTC",
                                                                              time.gmtime()))
    info = machine_info()
    res["machine"] = {"cpu": info.get("cpu_model"), "cpu_id": info.get("cpu_id"),
                      "usable_cores": info.get("usable_cores"),
                      "blas": info.get("blas"), "env": info.get("env"),
                      "load_average_start": load_start, "load_average_end": list(os.getloadavg())}
    path = RESULTS_DIR / f"{args.results}.json"
    runs = json.loads(path.read_text()).get("runs", {}) if path.exists() else {}
    runs[f"{args.framework}-seed{args.seed}"] = res
    write_results(args.results, [], report(args.results, runs), extra={"runs": runs})
    print(report(args.results, runs))


def report(name, runs):
    lines = [f"# Time to accuracy on CPU: ResNet-20, full CIFAR-10 (JPEG copy) ({name})", "",
             "Each run fits its schedule to the budget (minires.budget) and is timed from its "
             "process's start; one run after the other on the same machine.", "",
             "| run | recipe | budget | steps | epochs | wall (min) | used | test acc | "
             "machine (load at start) | BLAS kernel | finished |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for key, r in sorted(runs.items()):
        m, f, c = r.get("machine", {}), r.get("fitted", {}), r.get("config", {})
        blas = ", ".join(f"{b.get('internal_api')} {b.get('architecture')}"
                         for b in m.get("blas") or [] if b.get("user_api") == "blas")
        lines.append(
            f"| {key} | bs {c.get('batch_size')}, lr {c.get('lr')}, ema {c.get('ema')}, "
            f"tta {c.get('tta')} | {r['budget_min']:g} min | {f.get('total_steps')} | "
            f"{len(r['epochs'])} | {r['wall_s'] / 60:.2f} | {100 * r['wall_s'] / (60 * r['budget_min']):.1f}% | "
            f"**{100 * r.get('final_test_acc', r['epochs'][-1]['test_acc']):.2f}%** | {m.get('cpu')}"
            f"{' (' + m['cpu_id'] + ')' if m.get('cpu_id') else ''}, {m.get('usable_cores')} cores "
            f"({m.get('load_average_start', [0])[0]:.2f}) | {blas} | {r.get('finished', '')} |")
    views = [(k, r["views"]) for k, r in sorted(runs.items()) if r.get("views")]
    if views:
        lines += ["", "The same runs' last checkpoints evaluated four ways (after the run, "
                      "outside the budget):", "",
                  "| run | " + " | ".join(views[0][1]) + " |",
                  "|---|" + "---:|" * len(views[0][1])]
        lines += [f"| {k} | " + " | ".join(f"{100 * v:.2f}%" for v in vs.values()) + " |"
                  for k, vs in views]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
