"""CPU speed: whole steps, minires vs torch, each framework in its own process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_speed
    python -m benchmarks.bench_speed --threads 2 --cases resnet20_train_step --no-memory
    python -m benchmarks.bench_speed --layers        # plus every layer type (diagnostic)
    python -m benchmarks.bench_speed --profile benchmarks/results/profile_after.txt

Method
* Steps: the ResNet-20 and ResNet-56 train steps (batch 128, 32x32: forward,
  loss, backward, SGD update) and the ResNet-18 eval forward (batch 8,
  224x224), built by benchmarks/bench_models.py.  Each framework runs in a
  process of its own (benchmarks/step_worker.py): in one process, torch's
  OpenMP threads spin-wait after each op and take a core from minires's
  threads, and the two share allocator settings.  The parent asks the two
  workers in turn, one step each, the order flipping every round, so the
  machine's load drifts over both alike; medians of wall and CPU time.
* Thread counts: 1 and all usable cores (the headline: what a user gets).
  torch gets n intra-op threads; minires n batch-chunk threads with numpy's
  BLAS on one thread (minires.parallel).
* BLAS kernel: the workers run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
  unset ('native': OpenBLAS picks the kernel for this CPU, as on a user's
  machine), plus one all-cores ResNet-20 row with OPENBLAS_CORETYPE forced
  (``--forced-kernel``, default Haswell: what the environments of earlier
  benchmark machines set).  The kernel threadpoolctl reports in the minires
  worker is recorded in each row; the machine section records every
  OPENBLAS_*/OMP_* variable of the parent.
* Peak memory of each step: a fresh subprocess per framework
  (bench_models.measure_memory: VmHWM growth after the imports, two steps).
* ``--layers``: every layer type at its ResNet-20 / ResNet-18 shape, forward
  and backward timed separately, both frameworks in THIS process: a
  diagnostic for finding slow layers, not a figure to quote.

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
PAIRS = 3           # fresh pairs of worker processes per row (see bench_step)
STEPS_PER_TURN = 3  # steps per turn of a worker; the first is not timed (see bench_step)


class Worker:
    """One framework's step in its own process (benchmarks/step_worker.py)."""

    def __init__(self, framework, case, threads, forced_kernel=None):
        env = dict(os.environ)
        for name in BLAS_VARIABLES:  # native: numpy picks its kernel from the CPU, as a user's does
            env.pop(name, None)
        if forced_kernel:  # what the environments of these machines forced before
            env["OPENBLAS_CORETYPE"] = forced_kernel
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


def bench_step(case, threads, repeats, warmup, forced_kernel=None, pairs=PAIRS):
    """A whole step, each framework in its own process, alternating turns (the
    order flips every round), in ``pairs`` fresh pairs of processes one after
    the other; wall and CPU medians of both over every timed step.

    Why several pairs: the same minires worker ran its 2-thread ResNet-20 step
    in 404 ms in one process and 327-336 ms in the next three (each steady
    within itself), so one process's figure can be an outlier of the machine.
    Why the first step of each turn is not timed: after the other framework's
    turn (or any pause) minires's first step is slower on these VMs and
    torch's is not (measured, ResNet-20 on 2 threads, one worker: 330 ms back
    to back, 354 ms after 0.2 s idle; torch 271 and 272 ms).  minires's pool
    threads sleep between ops and are woken for each one; woken after a
    pause, a halted virtual CPU answers slower, while torch's OpenMP threads
    spin between ops.  A training loop runs its steps back to back, so the
    steady step is the figure that matches it."""
    rec = {k: [] for k in ("mr", "t", "mr_cpu", "t_cpu")}
    per_pair = []
    for _ in range(pairs):
        workers = {"mr": Worker("minires", case, threads, forced_kernel),
                   "t": Worker("torch", case, threads, forced_kernel)}
        try:
            blas = {k: w.ask("info") for k, w in workers.items()}
            for w in workers.values():
                w.ask(f"run {warmup}")
            got_pair = {"mr": [], "t": []}
            for r in range(repeats):
                for name in (("mr", "t") if r % 2 else ("t", "mr")):
                    got = workers[name].ask(f"run {STEPS_PER_TURN}")
                    rec[name] += got["wall"][1:]
                    rec[name + "_cpu"] += got["cpu"][1:]
                    got_pair[name] += got["wall"][1:]
        finally:
            for w in workers.values():
                w.close()
        per_pair.append({k: _median_ms(v) for k, v in got_pair.items()})
    row = {"case": case, "threads": threads,
           "blas": f"forced {forced_kernel}" if forced_kernel else "native",
           "kernel": next((lib.get("architecture") for lib in blas["mr"]["threadpoolctl"]
                           if lib.get("internal_api") == "openblas"), None),
           "blas_env": blas["mr"]["env"], "pairs": per_pair}
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
    from minires import heap
    limiter = threadpool_limits(limits=1)  # noqa: F841
    minires.set_num_threads(threads)
    heap.keep_freed_memory()  # as the minires commands do
    model, _, _, step = make_minires_step("resnet20_train_step")
    spent = collections.defaultdict(float)

    def timed(module):
        name, forward, backward = type(module).__name__, module.forward, module.backward

        def fwd(*a, **kw):
            c0 = time.perf_counter()
            y = forward(*a, **kw)
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
CASE_NAMES = {"resnet20_train_step": "ResNet-20 train step, batch 128, 32x32",
              "resnet56_train_step": "ResNet-56 train step, batch 128, 32x32",
              "resnet18_forward": "ResNet-18 eval forward, batch 8, 224x224"}


def headline(step_rows):
    """One row per (case, thread count, BLAS kernel): minires, torch, the ratio."""
    out = ["| step | threads | numpy's BLAS kernel | minires ms | torch ms | **ratio** | "
           "ratio of CPU time | minires peak MiB | torch peak MiB |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in step_rows:
        mem = (f"{r['minires_peak_mib']:.0f} | {r['torch_peak_mib']:.0f}"
               if "minires_peak_mib" in r else "- | -")
        out.append(f"| {CASE_NAMES[r['case']]} | {r['threads']} | {r['kernel']} ({r['blas']}) | "
                   f"{r['mr_ms']:.0f} | {r['t_ms']:.0f} | **{r['ratio']:.2f}** | "
                   f"{r['ratio_cpu']:.2f} | {mem} |")
    return "\n".join(out)


def markdown(layer_rows):
    out = ["| threads | network | layer | input | minires fwd ms | torch fwd ms | ratio fwd | "
           "minires bwd ms | torch bwd ms | ratio bwd | ratio CPU f+b |",
           "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in layer_rows:
        out.append(f"| {r['threads']} | {r['network']} | {r['layer']} | {'x'.join(map(str, r['input']))} | "
                   f"{r['mr_fwd_ms']:.2f} | {r['t_fwd_ms']:.2f} | {r['ratio_fwd']:.2f} | "
                   f"{r['mr_bwd_ms']:.2f} | {r['t_bwd_ms']:.2f} | {r['ratio_bwd']:.2f} | "
                   f"{r['ratio_cpu']:.2f} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default=None, help="comma-separated, e.g. 1,2 (default: 1 and all)")
    ap.add_argument("--cases", default="resnet20_train_step,resnet56_train_step,resnet18_forward")
    ap.add_argument("--forced-kernel", default="Haswell",
                    help="also run the all-cores ResNet-20 step with OPENBLAS_CORETYPE set to this "
                         "('' for none): what the environments of earlier benchmark machines forced")
    ap.add_argument("--step-repeats", type=int, default=5, help="rounds per pair of processes")
    ap.add_argument("--pairs", type=int, default=PAIRS, help="fresh pairs of processes per row")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--layers", action="store_true",
                    help="also time every layer type, both frameworks in THIS process (a "
                         "diagnostic: the step rows, each framework in its own process, are the figures)")
    ap.add_argument("--repeats", type=int, default=3, help="per-layer repeats (--layers)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--profile", metavar="FILE")
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args(argv)
    global CHANNELS_LAST
    CHANNELS_LAST = args.channels_last
    if args.profile:
        return profile(args.profile, int(args.threads or 1))

    from benchmarks.bench_models import measure_memory
    from benchmarks.machine import machine_info, write_results
    machine = machine_info()
    cores = len(os.sched_getaffinity(0))
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({1, cores}))
    cases = args.cases.split(",")
    load_start = list(os.getloadavg())
    runs = [(case, n, None) for n in sorted(threads, reverse=True) for case in cases]
    if args.forced_kernel:
        runs.append(("resnet20_train_step", max(threads), args.forced_kernel))
    step_rows = []
    for case, n, forced in runs:
        row = bench_step(case, n, args.step_repeats, args.warmup, forced, pairs=args.pairs)
        step_rows.append(row)
        print(f"[{n} thr, {row['kernel']}] {case}: minires {row['mr_ms']:.0f} ms, torch "
              f"{row['t_ms']:.0f} ms, ratio {row['ratio']:.2f} (CPU {row['ratio_cpu']:.2f}); "
              "per pair " + ", ".join(f"{p['mr']:.0f}/{p['t']:.0f}" for p in row["pairs"]),
              flush=True)
    if not args.no_memory:  # peak memory does not depend on timing noise: once, on all cores
        for row in step_rows:
            if row["threads"] == max(threads) and row["blas"] == "native":
                for fw in ("minires", "torch"):
                    mem = measure_memory(fw, row["case"], row["threads"])
                    row[f"{fw}_peak_mib"] = mem["peak_minus_baseline_bytes"] / 2**20
                print(f"{row['case']} peak MiB: minires {row['minires_peak_mib']:.0f}, "
                      f"torch {row['torch_peak_mib']:.0f}", flush=True)
    layer_rows = []
    if args.layers:
        import torch  # noqa: F401
        from benchmarks.bench_models import pin_threads
        rng = np.random.default_rng(0)
        for n in threads:
            pin_threads(n)
            for spec in LAYERS:
                layer_rows.append(dict(bench_layer(spec, args.repeats, 1, rng), threads=n))
    table = headline(step_rows)
    if layer_rows:
        table += ("\n\nPer layer, both frameworks in one process (a diagnostic; they disturb "
                  "each other there):\n\n" + markdown(layer_rows))
    load_end = list(os.getloadavg())
    print()
    print(table)
    if args.no_write:
        return 0
    notes = (f"Each framework runs in its own process (benchmarks/step_worker.py); each row "
             f"takes {args.pairs} fresh pairs of processes, one after the other; in each, after "
             f"{args.warmup} warm-up steps, the two take turns for {args.step_repeats} rounds (the "
             f"order flips every round), {STEPS_PER_TURN} steps a turn of which the first is not "
             "timed (minires's first step after a pause is slower on these VMs, torch's is not: "
             "see bench_step); medians over every timed step (each pair's medians are in the "
             "JSON); ratio = minires / torch (lower is better for minires). A train step "
             "is forward, loss, backward and an SGD update (momentum 0.9, weight decay) in "
             "both; ResNet-18 is an eval forward under no_grad. 'native': OPENBLAS_CORETYPE and "
             "OPENBLAS_L2_SIZE unset in the workers, so numpy's OpenBLAS picks the kernel for "
             "this CPU, as on a user's machine; 'forced': OPENBLAS_CORETYPE set as the "
             "environments of earlier benchmark machines did. The kernel column is what "
             "threadpoolctl reported inside minires's worker. Each framework gets n cores its "
             "own way: torch its intra-op threads, minires its batch-chunk threads "
             "(minires.parallel) with numpy's BLAS on one thread. Peak memory: VmHWM growth "
             "after the imports in a fresh process per framework (two steps, no optimizer). "
             f"Load average (1, 5, 15 min) at the start {[round(v, 2) for v in load_start]}, "
             f"at the end {[round(v, 2) for v in load_end]}.")
    md = "# CPU speed: minires vs torch, whole steps\n\n" + table + "\n\n" + notes + "\n"
    paths = write_results("bench_speed", {"steps": step_rows, "layers": layer_rows}, md,
                          machine=machine, extra={"threads": threads, "notes": notes,
                                                  "load_average_start": load_start,
                                                  "load_average_end": load_end})
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
