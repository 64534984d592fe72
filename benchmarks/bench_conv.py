"""Conv2d forward+backward: minires (NumPy) vs torch on the CPU, same process.

Run from the repository root:

    python -m benchmarks.bench_conv              # 1 thread, then all usable cores
    python -m benchmarks.bench_conv --threads 2  # or e.g. --threads 1,4

Both libraries get the same thread count (torch.set_num_threads and
threadpoolctl's limit on numpy's BLAS).  Each shape is warmed up, then the two
libraries run alternately (the order flips every round, so drifting machine
load hits both alike) and the medians are compared.  Writes
benchmarks/results/bench_conv.json and .md.
"""
import argparse
import os
import statistics
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import minires
from minires.nn import Conv2d
from benchmarks.machine import machine_info, write_results

# (label, batch, in_ch, out_ch, size, kernel, stride, padding, count in ResNet-20)
# The count says how often the shape occurs in a CIFAR ResNet-20 with 1x1
# projection shortcuts (option B); it weights the "ResNet-20 convs" total.
SHAPES = [
    ("cifar stem 3->16 32px", 128, 3, 16, 32, 3, 1, 1, 1),
    ("cifar 3x3 16->16 32px", 128, 16, 16, 32, 3, 1, 1, 6),
    ("cifar 3x3 32->32 16px", 128, 32, 32, 16, 3, 1, 1, 5),
    ("cifar 3x3 64->64 8px", 128, 64, 64, 8, 3, 1, 1, 5),
    ("cifar 3x3 s2 16->32 32px", 128, 16, 32, 32, 3, 2, 1, 1),
    ("cifar 3x3 s2 32->64 16px", 128, 32, 64, 16, 3, 2, 1, 1),
    ("cifar 1x1 s2 16->32 32px", 128, 16, 32, 32, 1, 2, 0, 1),
    ("cifar 1x1 s2 32->64 16px", 128, 32, 64, 16, 1, 2, 0, 1),
    ("resnet18 3x3 64->64 56px", 8, 64, 64, 56, 3, 1, 1, 0),
    ("resnet18 3x3 256->256 14px", 8, 256, 256, 14, 3, 1, 1, 0),
    ("resnet50 1x1 256->64 56px", 8, 256, 64, 56, 1, 1, 0, 0),
]


def bench_shape(shape, rounds, warmup, rng):
    label, n, c, o, size, k, s, p, _ = shape
    mr = Conv2d(c, o, k, stride=s, padding=p, bias=False)
    tc = torch.nn.Conv2d(c, o, k, stride=s, padding=p, bias=False)
    with torch.no_grad():
        tc.weight.copy_(torch.from_numpy(mr.weight.data))
    x = rng.standard_normal((n, c, size, size)).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_(True)
    out_shape = tuple(tc(tx).shape)
    dy = rng.standard_normal(out_shape).astype(np.float32)
    tdy = torch.from_numpy(dy)
    times = {lib: {"fwd": [], "bwd": [], "cpu": []} for lib in ("minires", "torch")}

    def run_minires(record):
        c0, t0 = time.process_time(), time.perf_counter()
        y = mr(x)
        t1 = time.perf_counter()
        dx = mr.backward(dy)
        t2, c2 = time.perf_counter(), time.process_time()
        mr.zero_grad()
        if record:
            times["minires"]["fwd"].append(t1 - t0)
            times["minires"]["bwd"].append(t2 - t1)
            times["minires"]["cpu"].append(c2 - c0)
        return y, dx

    def run_torch(record):
        c0, t0 = time.process_time(), time.perf_counter()
        y = tc(tx)
        t1 = time.perf_counter()
        y.backward(tdy)
        t2, c2 = time.perf_counter(), time.process_time()
        tc.zero_grad(set_to_none=True)
        tx.grad = None
        if record:
            times["torch"]["fwd"].append(t1 - t0)
            times["torch"]["bwd"].append(t2 - t1)
            times["torch"]["cpu"].append(c2 - c0)
        return y

    # Warm-up, and a sanity check that both compute the same thing.
    y_mr, _ = run_minires(False)
    y_t = run_torch(False)
    rel_err = float(np.max(np.abs(y_mr - y_t.detach().numpy())) / np.max(np.abs(y_t.detach().numpy())))
    for _ in range(warmup - 1):
        run_minires(False)
        run_torch(False)
    for r in range(rounds):
        order = (run_minires, run_torch) if r % 2 == 0 else (run_torch, run_minires)
        for fn in order:
            fn(True)

    row = {"shape": label, "batch": n, "in_channels": c, "out_channels": o, "size": size,
           "kernel": k, "stride": s, "padding": p, "resnet20_count": shape[-1],
           "rounds": rounds, "forward_rel_err": rel_err}
    for lib in ("minires", "torch"):
        fwd = statistics.median(times[lib]["fwd"]) * 1e3
        bwd = statistics.median(times[lib]["bwd"]) * 1e3
        tot = statistics.median([a + b for a, b in zip(times[lib]["fwd"], times[lib]["bwd"])]) * 1e3
        row[f"{lib}_fwd_ms"], row[f"{lib}_bwd_ms"], row[f"{lib}_total_ms"] = fwd, bwd, tot
        row[f"{lib}_total_cpu_ms"] = statistics.median(times[lib]["cpu"]) * 1e3
    row["ratio_fwd"] = row["minires_fwd_ms"] / row["torch_fwd_ms"]
    row["ratio_bwd"] = row["minires_bwd_ms"] / row["torch_bwd_ms"]
    row["ratio_total"] = row["minires_total_ms"] / row["torch_total_ms"]
    # CPU time of the whole process (all threads): steadier than wall time on a
    # shared machine; with one thread it is the same quantity, less the waiting.
    row["ratio_total_cpu"] = row["minires_total_cpu_ms"] / row["torch_total_cpu_ms"]
    return row


def rounds_for(shape, budget_s):
    """Enough alternating rounds to fill ~budget_s, between 5 and 30."""
    _, n, c, o, size, k, s, *_ = shape
    flops = 6.0 * n * o * c * k * k * (size // s) ** 2  # forward + two backward products
    est_s = flops / 20e9 + 0.01                         # a rough guess of one minires step
    return int(min(30, max(5, budget_s / (2 * est_s))))


def markdown_table(rows, threads):
    lines = [f"### {threads} thread(s)", "",
             "| shape | minires fwd ms | torch fwd ms | minires f+b ms | torch f+b ms "
             "| ratio fwd | ratio bwd | ratio f+b | ratio f+b CPU time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['shape']} (N={r['batch']}) | {r['minires_fwd_ms']:.1f} | {r['torch_fwd_ms']:.1f} "
                     f"| {r['minires_total_ms']:.1f} | {r['torch_total_ms']:.1f} | {r['ratio_fwd']:.2f} "
                     f"| {r['ratio_bwd']:.2f} | {r['ratio_total']:.2f} | {r['ratio_total_cpu']:.2f} |")
    return "\n".join(lines)


def resnet20_total(rows):
    """Sum of f+b medians weighted by how often each shape occurs in ResNet-20."""
    def total(key):
        return sum(r[key] * r["resnet20_count"] for r in rows)
    return (total("minires_total_ms"), total("torch_total_ms"),
            total("minires_total_cpu_ms"), total("torch_total_cpu_ms"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default=None,
                    help="comma-separated thread counts (default: 1, then all usable cores)")
    ap.add_argument("--budget", type=float, default=2.0,
                    help="seconds of timed rounds per shape and thread count (default 2)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only, write no results")
    args = ap.parse_args(argv)

    machine = machine_info()
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({1, machine["usable_cores"]}))
    minires.manual_seed(0)
    rng = np.random.default_rng(0)
    all_rows, md_parts = [], ["# Conv2d forward+backward: minires vs torch (CPU, float32)", "",
                              "Medians of alternating runs in one process; ratio = minires / torch "
                              "(lower is better for minires). No bias, as in ResNets. The CPU-time "
                              "ratio (all threads of the process) is steadier on a shared machine.", ""]
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        rows = []
        with threadpool_limits(limits=n_threads):
            for shape in SHAPES:
                row = bench_shape(shape, rounds_for(shape, args.budget), args.warmup, rng)
                row["threads"] = n_threads
                rows.append(row)
                print(f"[{n_threads} thr] {row['shape']:<28} minires {row['minires_total_ms']:8.1f} ms"
                      f"  torch {row['torch_total_ms']:8.1f} ms  ratio f+b {row['ratio_total']:.2f}"
                      f" (fwd {row['ratio_fwd']:.2f}, bwd {row['ratio_bwd']:.2f};"
                      f" CPU time {row['ratio_total_cpu']:.2f})", flush=True)
        mr_total, tc_total, mr_cpu, tc_cpu = resnet20_total(rows)
        summary = (f"ResNet-20 convolutions (19 convs + 2 projection shortcuts, batch 128), "
                   f"one forward+backward: minires {mr_total:.0f} ms, torch {tc_total:.0f} ms, "
                   f"ratio {mr_total / tc_total:.2f} (CPU time ratio {mr_cpu / tc_cpu:.2f})")
        print(f"[{n_threads} thr] {summary}\n", flush=True)
        md_parts += [markdown_table(rows, n_threads), "", summary, ""]
        all_rows += rows
    load_end = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    cores = machine["usable_cores"]
    if load_end and max(load_end[0], (machine["load_average_1_5_15min"] or [0])[0]) > cores / 2:
        md_parts += [f"Note: other processes were running (1-minute load average "
                     f"{machine['load_average_1_5_15min'][0]:.1f} at the start, {load_end[0]:.1f} "
                     f"at the end, on {cores} cores), so these timings are noisy; multi-threaded "
                     f"ones most of all, since a BLAS thread that loses its core stalls the others.",
                     ""]
    markdown = "\n".join(md_parts)
    print(markdown)
    if not args.no_write:
        paths = write_results("bench_conv", all_rows, markdown, machine=machine,
                              extra={"threads": threads})
        print("wrote", *paths)


if __name__ == "__main__":
    main()
