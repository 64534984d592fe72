"""CPU speed: every ResNet layer type, then whole steps, minires vs torch, one table.

    python -m benchmarks.bench_speed                 # 1 thread, then 2 (or all usable cores)
    python -m benchmarks.bench_speed --threads 1     # one setting only
    python -m benchmarks.bench_speed --profile benchmarks/results/profile_after.txt

Method
* Layers at the shapes they have in ResNet-20 (batch 128, 32x32) and
  ResNet-18 (batch 8, 224x224), forward and backward timed separately.
  Both frameworks get contiguous NCHW inputs (what their networks pass
  between layers).  ``--channels-last`` gives minires NHWC memory instead
  (for experiments with a channels-last conv; the current one is NCHW).
* Whole steps: the ResNet-20 train step (forward, loss, backward, SGD update)
  and the ResNet-18 eval forward, built by benchmarks/bench_models.py (same
  weights and inputs in both frameworks).
* Both frameworks on the same thread count: torch.set_num_threads, and
  minires.set_num_threads (its batch-chunk threads, numpy's BLAS on one
  thread, set by minires).  No threadpoolctl limit: it would cap torch's
  OpenMP pool as well.  The headline is all cores.  After warm-up the two alternate (the
  order flips every round), and medians are reported, of wall time and of
  process CPU time (steadier when other jobs share the cores).
* Peak memory of each step: a fresh subprocess per framework
  (bench_models.measure_memory: VmHWM growth after the imports, two steps).
* The BLAS in use and every OPENBLAS_*/OMP_* variable are recorded with the
  results (benchmarks/machine.py).  On machines where OPENBLAS_CORETYPE or
  OPENBLAS_L2_SIZE is set, run this with both unset for that command alone
  (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m ...``) and check
  the "architecture" threadpoolctl reports in the machine section.

``--profile FILE [--threads N]`` instead profiles minires's ResNet-20 train
step (1 thread unless --threads): wall time per layer type, forward and
backward, then pyinstrument's call tree.
"""
import argparse
import os
import json
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

CHANNELS_LAST = False  # set by --channels-last

# (label, network, layer, args, batch, channels, size, may be given channels-last)
LAYERS = [
    ("conv 3x3 3->16 (stem)", "resnet20", "conv", (3, 16, 3, 1, 1), 128, 3, 32, False),
    ("conv 3x3 16->16", "resnet20", "conv", (16, 16, 3, 1, 1), 128, 16, 32, True),
    ("conv 3x3 s2 16->32", "resnet20", "conv", (16, 32, 3, 2, 1), 128, 16, 32, True),
    ("conv 3x3 32->32", "resnet20", "conv", (32, 32, 3, 1, 1), 128, 32, 16, True),
    ("conv 3x3 s2 32->64", "resnet20", "conv", (32, 64, 3, 2, 1), 128, 32, 16, True),
    ("conv 3x3 64->64", "resnet20", "conv", (64, 64, 3, 1, 1), 128, 64, 8, True),
    ("batchnorm 16", "resnet20", "bn", (16,), 128, 16, 32, True),
    ("batchnorm 32", "resnet20", "bn", (32,), 128, 32, 16, True),
    ("batchnorm 64", "resnet20", "bn", (64,), 128, 64, 8, True),
    ("relu 16", "resnet20", "relu", (), 128, 16, 32, True),
    ("relu 64", "resnet20", "relu", (), 128, 64, 8, True),
    ("global avgpool 64", "resnet20", "avgpool", (), 128, 64, 8, True),
    ("linear 64->10", "resnet20", "linear", (64, 10), 128, 64, None, False),
    ("conv 7x7 s2 3->64 (stem)", "resnet18", "conv", (3, 64, 7, 2, 3), 8, 3, 224, False),
    ("maxpool 3x3 s2 64", "resnet18", "maxpool", (), 8, 64, 112, True),
    ("conv 3x3 64->64", "resnet18", "conv", (64, 64, 3, 1, 1), 8, 64, 56, True),
    ("conv 3x3 s2 64->128", "resnet18", "conv", (64, 128, 3, 2, 1), 8, 64, 56, True),
    ("conv 1x1 s2 64->128", "resnet18", "conv", (64, 128, 1, 2, 0), 8, 64, 56, True),
    ("conv 3x3 128->128", "resnet18", "conv", (128, 128, 3, 1, 1), 8, 128, 28, True),
    ("conv 3x3 256->256", "resnet18", "conv", (256, 256, 3, 1, 1), 8, 256, 14, True),
    ("conv 3x3 512->512", "resnet18", "conv", (512, 512, 3, 1, 1), 8, 512, 7, True),
    ("batchnorm 64", "resnet18", "bn", (64,), 8, 64, 112, True),
    ("batchnorm 512", "resnet18", "bn", (512,), 8, 512, 7, True),
    ("relu 64", "resnet18", "relu", (), 8, 64, 112, True),
    ("global avgpool 512", "resnet18", "avgpool", (), 8, 512, 7, True),
    ("linear 512->1000", "resnet18", "linear", (512, 1000), 8, 512, None, False),
]


def make_layers(kind, args):
    """(minires module, torch module) with the same parameters."""
    import torch
    import minires.nn as mnn
    if kind == "conv":
        cin, cout, k, s, p = args
        m = mnn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)
        t = torch.nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)
    elif kind == "bn":
        m, t = mnn.BatchNorm2d(args[0]), torch.nn.BatchNorm2d(args[0])
    elif kind == "relu":
        m, t = mnn.ReLU(), torch.nn.ReLU()
    elif kind == "avgpool":
        m, t = mnn.AdaptiveAvgPool2d(1), torch.nn.AdaptiveAvgPool2d(1)
    elif kind == "maxpool":
        m, t = mnn.MaxPool2d(3, 2, 1), torch.nn.MaxPool2d(3, 2, 1)
    else:
        m, t = mnn.Linear(*args), torch.nn.Linear(*args)
    t.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()})
    return m, t


def _median_ms(values):
    return 1e3 * statistics.median(values)


def bench_layer(spec, repeats, warmup, rng):
    import torch
    label, net, kind, args, n, c, size, channels_last = spec
    m, t = make_layers(kind, args)
    shape = (n, c) if size is None else (n, c, size, size)
    x = rng.standard_normal(shape).astype(np.float32)
    x_mr = x
    if channels_last and CHANNELS_LAST:  # NCHW shape over NHWC memory
        x_mr = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    tx = torch.from_numpy(x).requires_grad_(True)
    dy = rng.standard_normal(tuple(t(tx).shape)).astype(np.float32)
    tdy = torch.from_numpy(dy)
    dy_mr = np.asarray(m(x_mr))  # forward once, for dy's layout; drop its cache
    m.clear_caches()
    if dy_mr.ndim == 4:  # the upstream gradient in the layout minires's own output has
        dy_mr = np.empty_like(dy_mr)
        dy_mr[...] = dy
    else:
        dy_mr = dy
    rec = {k: [] for k in ("mr_fwd", "mr_bwd", "t_fwd", "t_bwd", "mr_cpu", "t_cpu")}

    def run_minires(keep):
        c0, t0 = time.process_time(), time.perf_counter()
        m(x_mr)
        t1 = time.perf_counter()
        m.backward(dy_mr)
        t2, c2 = time.perf_counter(), time.process_time()
        m.zero_grad()
        if keep:
            rec["mr_fwd"].append(t1 - t0), rec["mr_bwd"].append(t2 - t1), rec["mr_cpu"].append(c2 - c0)

    def run_torch(keep):
        c0, t0 = time.process_time(), time.perf_counter()
        y = t(tx)
        t1 = time.perf_counter()
        y.backward(tdy)
        t2, c2 = time.perf_counter(), time.process_time()
        t.zero_grad(set_to_none=True)
        tx.grad = None
        if keep:
            rec["t_fwd"].append(t1 - t0), rec["t_bwd"].append(t2 - t1), rec["t_cpu"].append(c2 - c0)

    for _ in range(warmup):
        run_minires(False), run_torch(False)
    for r in range(repeats):
        order = (run_minires, run_torch) if r % 2 else (run_torch, run_minires)
        for run in order:
            run(True)
    row = {"network": net, "layer": label, "input": list(shape)}
    for k, v in rec.items():
        row[k + "_ms"] = _median_ms(v)
    row["ratio_fwd"] = row["mr_fwd_ms"] / row["t_fwd_ms"]
    row["ratio_bwd"] = row["mr_bwd_ms"] / row["t_bwd_ms"]
    row["ratio_cpu"] = row["mr_cpu_ms"] / row["t_cpu_ms"]
    return row


BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


class Worker:
    """One framework's step in its own process (benchmarks/step_worker.py)."""

    def __init__(self, framework, case, threads, native_blas):
        env = dict(os.environ)
        if native_blas:  # what a user's machine gets: numpy picks its kernel from the CPU
            for name in BLAS_VARIABLES:
                env.pop(name, None)
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.step_worker", framework,
                                      case, str(threads)], cwd=REPO, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ask(None)  # wait for "ready": built, one step run

    def ask(self, command):
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"step worker ended (exit status {self.proc.wait()})")
        return json.loads(line)

    def close(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def bench_step(case, threads, repeats, warmup, native_blas=True):
    """A whole step, each framework in its own process, alternating rounds (the
    order flips every round); wall and CPU medians of both."""
    workers = {"mr": Worker("minires", case, threads, native_blas),
               "t": Worker("torch", case, threads, native_blas)}
    try:
        blas = {k: w.ask("info") for k, w in workers.items()}
        for w in workers.values():
            w.ask(f"run {warmup}")
        rec = {k: [] for k in ("mr", "t", "mr_cpu", "t_cpu")}
        for r in range(repeats):
            for name in (("mr", "t") if r % 2 else ("t", "mr")):
                got = workers[name].ask("run 1")
                rec[name] += got["wall"]
                rec[name + "_cpu"] += got["cpu"]
    finally:
        for w in workers.values():
            w.close()
    row = {"case": case, "blas": "native" if native_blas else "environment",
           "kernel": next((lib.get("architecture") for lib in blas["mr"]["threadpoolctl"]
                           if lib.get("internal_api") == "openblas"), None),
           "blas_env": blas["mr"]["env"]}
    for k, v in rec.items():
        row[k + "_ms"] = _median_ms(v)
        row[k + "_all_ms"] = [1e3 * s for s in v]
    row["ratio"] = row["mr_ms"] / row["t_ms"]
    row["ratio_cpu"] = row["mr_cpu_ms"] / row["t_cpu_ms"]
    return row


# ---------------------------------------------------------------- profile
def profile(path, threads=1, steps=3):
    """Wall time per layer type (forward/backward) of minires's ResNet-20 train
    step on ``threads`` threads, then pyinstrument's call tree; written to ``path``."""
    import collections
    import minires
    from threadpoolctl import threadpool_limits
    from benchmarks.bench_models import make_minires_step
    limiter = threadpool_limits(limits=1)  # noqa: F841
    minires.set_num_threads(threads)
    model, _, _, step = make_minires_step("resnet20_train_step")
    spent = collections.defaultdict(float)

    def timed(module):
        name, forward, backward = type(module).__name__, module.forward, module.backward

        def fwd(*a):
            c0 = time.perf_counter()
            y = forward(*a)
            spent[(name, "forward")] += time.perf_counter() - c0
            return y

        def bwd(d):
            c0 = time.perf_counter()
            dx = backward(d)
            spent[(name, "backward")] += time.perf_counter() - c0
            return dx
        module.forward, module.backward = fwd, bwd  # instance attributes shadow the methods

    for mod in model.modules():
        if not mod._modules:  # leaves only: containers would count their children twice
            timed(mod)
    step(), step()
    spent.clear()
    c0 = time.perf_counter()
    for _ in range(steps):
        step()
    total = (time.perf_counter() - c0) / steps
    lines = [f"minires ResNet-20 train step (forward, loss, backward), batch 128, "
             f"{threads} thread{'s' if threads > 1 else ''}",
             f"Wall time per step: {1e3 * total:.0f} ms (mean of {steps} steps; "
             f"load average at the start {[round(v, 2) for v in os.getloadavg()]})", "",
             "| layer type | pass | ms per step | share |", "|---|---|---:|---:|"]
    for (name, kind), v in sorted(spent.items(), key=lambda kv: -kv[1]):
        if v / steps >= 5e-5:
            lines.append(f"| {name} | {kind} | {1e3 * v / steps:.1f} | {100 * v / steps / total:.1f}% |")
    rest = total - sum(spent.values()) / steps
    lines.append(f"| (loss, additions, Python) | | {1e3 * rest:.1f} | {100 * rest / total:.1f}% |")
    text = "\n".join(lines)
    try:
        from pyinstrument import Profiler
        prof = Profiler(interval=0.001)
        prof.start()
        for _ in range(steps):
            step()
        prof.stop()
        text += "\n\npyinstrument, %d steps (wall time):\n\n" % steps
        text += prof.output_text(unicode=False, color=False)
    except ImportError:
        text += "\n\n(pyinstrument not installed: no call tree)\n"
    from benchmarks.machine import machine_info, machine_markdown
    text += "\n" + machine_markdown(machine_info()) + "\n"
    with open(path, "w") as f:
        f.write(text)
    print(text)


# ---------------------------------------------------------------- report
def headline(step_rows):
    """One row per step: one thread and all cores side by side (the headline is
    what a user gets: all cores)."""
    counts = sorted({r["threads"] for r in step_rows})
    one, most = counts[0], counts[-1]
    out = [f"| whole step | {one} thread: minires ms | torch ms | ratio | "
           f"all {most} cores: minires ms | torch ms | **ratio** |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for case in dict.fromkeys(r["case"] for r in step_rows):
        a = next(r for r in step_rows if r["case"] == case and r["threads"] == one)
        b = next(r for r in step_rows if r["case"] == case and r["threads"] == most)
        out.append(f"| {case} | {a['mr_ms']:.0f} | {a['t_ms']:.0f} | {a['ratio']:.2f} | "
                   f"{b['mr_ms']:.0f} | {b['t_ms']:.0f} | **{b['ratio']:.2f}** |")
    return "\n".join(out)


def markdown(layer_rows, step_rows):
    out = ["| threads | network | layer | input | minires fwd ms | torch fwd ms | ratio fwd | "
           "minires bwd ms | torch bwd ms | ratio bwd | ratio CPU f+b |",
           "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in layer_rows:
        out.append(f"| {r['threads']} | {r['network']} | {r['layer']} | {'x'.join(map(str, r['input']))} | "
                   f"{r['mr_fwd_ms']:.2f} | {r['t_fwd_ms']:.2f} | {r['ratio_fwd']:.2f} | "
                   f"{r['mr_bwd_ms']:.2f} | {r['t_bwd_ms']:.2f} | {r['ratio_bwd']:.2f} | "
                   f"{r['ratio_cpu']:.2f} |")
    out += ["", "| threads | whole step | minires ms | torch ms | ratio | ratio CPU time | "
            "minires peak MiB | torch peak MiB |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in step_rows:
        mem = (f"{r['minires_peak_mib']:.0f} | {r['torch_peak_mib']:.0f}"
               if "minires_peak_mib" in r else "- | -")
        out.append(f"| {r['threads']} | {r['case']} | {r['mr_ms']:.0f} | {r['t_ms']:.0f} | "
                   f"{r['ratio']:.2f} | {r['ratio_cpu']:.2f} | {mem} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default=None, help="comma-separated, e.g. 1,2 (default: 1 and all)")
    ap.add_argument("--layer-threads", default=None,
                    help="thread counts for the per-layer rows (default: the same as --threads)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-layers", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--profile", metavar="FILE")
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args(argv)
    global CHANNELS_LAST
    CHANNELS_LAST = args.channels_last
    if args.profile:
        return profile(args.profile, int(args.threads or 1))

    import torch  # noqa: F401  (imported before timing starts)
    from benchmarks.bench_models import measure_memory, pin_threads
    from benchmarks.machine import machine_info, write_results
    machine = machine_info()
    cores = len(os.sched_getaffinity(0))
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({1, cores}))
    rng = np.random.default_rng(0)
    layer_rows, step_rows = [], []
    for n in threads:
        pin_threads(n)  # n cores for each framework, each its own way (see there)
        layer_threads = (args.layer_threads.split(",") if args.layer_threads
                         else [str(t) for t in threads])
        if not args.no_layers and str(n) in layer_threads:
            for spec in LAYERS:
                row = dict(bench_layer(spec, args.repeats, args.warmup, rng), threads=n)
                layer_rows.append(row)
                print(f"[{n} thr] {row['network']} {row['layer']}: fwd {row['ratio_fwd']:.2f}, "
                      f"bwd {row['ratio_bwd']:.2f}, cpu {row['ratio_cpu']:.2f}", flush=True)
        for case in ("resnet20_train_step", "resnet18_forward"):
            row = dict(bench_step(case, args.step_repeats, args.warmup), threads=n)
            step_rows.append(row)
            print(f"[{n} thr] {case}: minires {row['mr_ms']:.0f} ms, torch {row['t_ms']:.0f} ms, "
                  f"ratio {row['ratio']:.2f} (CPU {row['ratio_cpu']:.2f})", flush=True)
    if not args.no_memory:  # peak memory does not depend on timing noise: once, at the last count
        for row in step_rows:
            if row["threads"] == threads[-1]:
                for fw in ("minires", "torch"):
                    mem = measure_memory(fw, row["case"], row["threads"])
                    row[f"{fw}_peak_mib"] = mem["peak_minus_baseline_bytes"] / 2**20
                print(f"{row['case']} peak MiB: minires {row['minires_peak_mib']:.0f}, "
                      f"torch {row['torch_peak_mib']:.0f}", flush=True)
    table = headline(step_rows) + "\n\n" + markdown(layer_rows, step_rows)
    load_end = list(os.getloadavg())
    print()
    print(table)
    if args.no_write:
        return 0
    notes = (f"Medians of {args.repeats} (layers) / {args.step_repeats} (steps) alternating runs "
             f"after {args.warmup} warm-up; ratio = minires / torch (lower is better for minires). "
             "The ResNet-20 step includes the loss, backward and an SGD update (momentum 0.9, "
             "weight decay) in both frameworks; ResNet-18 is an eval forward under no_grad. "
             "Peak memory: VmHWM growth after the imports, in a fresh process per framework "
             "(two steps, no optimizer). Each framework gets n cores its own way: torch "
             "its intra-op threads, minires its batch-chunk threads (minires.parallel) with "
             "numpy's BLAS on one thread. With more than one thread the CPU-time ratio counts "
             "both cores, so the wall-time ratio is the one that matters; every time is in "
             f"the JSON. Load average (1, 5, 15 min) at the end: {[round(v, 2) for v in load_end]}.")
    md = "# CPU speed: minires vs torch, per layer and per step\n\n" + table + "\n\n" + notes + "\n"
    paths = write_results("bench_speed", {"layers": layer_rows, "steps": step_rows}, md,
                          machine=machine, extra={"threads": threads, "notes": notes,
                                                  "load_average_end": load_end})
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
