"""Conv2d forward+backward: minires (NumPy) vs torch on the CPU, same process.

Run from the repository root:

    python -m benchmarks.bench_conv              # 1 thread, then all usable cores
    python -m benchmarks.bench_conv --threads 2  # or e.g. --threads 1,4

Both libraries get the same thread count, each its own way
(``bench_models.pin_threads``: torch's intra-op threads; minires's batch
threads with numpy's BLAS on one thread).  Each shape is warmed up, then the
two libraries run alternately (the order flips every round, so drifting
machine load hits both alike) and the medians are compared.

"minires products" times only the matrix products of a 3x3 convolution's
forward and backward (y, dW, dx), the way minires runs them (same chunks,
same threads, same BLAS calls), on buffers built beforehand and kept in the
cache: what minires's design costs with every copy, pad and sum made free.
It is a floor for this design on this BLAS, set against torch's whole
forward+backward.  Writes
benchmarks/results/bench_conv.json and .md.
"""
import argparse
import os
import statistics
import threading
import time

import numpy as np
import torch

import minires
from minires import parallel
from minires.nn import Conv2d
from minires.nn.functional import conv_im2col as conv_ops, conv_shifted
from benchmarks.bench_models import make_torch_step, pin_threads
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


def products_only(x, weight, dy, stride, padding):
    """A function that runs just the matrix products of minires's conv2d
    forward and backward for these inputs (one group, k > 1), chunk by chunk
    on minires's threads, each thread on its own buffers built once (so they
    stay in its cache).  Stride 1: the per-offset products over shifted views
    (conv_shifted.py), without the sums of the offsets' parts, the padding
    and the cropping.  Stride 2: im2col's products, without the im2col."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    _, _, oh, ow = dy.shape
    k, p = c * kh * kw, oh * ow
    local = threading.local()
    if stride == 1:
        pads = (padding,) * 4
        _, wp, _, _, length = conv_shifted._geometry(x.shape, (kh, kw), pads, (1, 1))
        wide = oh * wp
        chunks = parallel.batch_chunks(n, (c * length + 2 * o * wide) * x.dtype.itemsize)
        w_off = np.ascontiguousarray(weight.transpose(2, 3, 0, 1))
        w_flip = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(2, 3, 1, 0))
        shifts = [ky * wp + kx for ky in range(kh) for kx in range(kw)]

        def buffers(m):
            if getattr(local, "m", None) != m:
                local.m = m
                local.flat = conv_shifted._flat_padded(np, x[:m], pads, length)
                local.dy_flat = conv_shifted._flat_padded(np, dy[:m], pads, length)
                local.dy_wide = np.zeros((m, o, wide), x.dtype)
                local.out = np.empty((m, o, wide), x.dtype)
                local.dx = np.empty((m, c, wide), x.dtype)
            return local

        def one(s):
            b = buffers(s.stop - s.start)
            for i, shift in enumerate(shifts):
                ky, kx = divmod(i, kw)
                np.matmul(w_off[ky, kx], b.flat[:, :, shift:shift + wide], out=b.out)        # y
                np.matmul(b.dy_wide, b.flat[:, :, shift:shift + wide].transpose(0, 2, 1)).sum(axis=0)  # dW
                np.matmul(w_flip[ky, kx], b.dy_flat[:, :, shift:shift + wide], out=b.dx)   # dx
        return lambda: parallel.map_chunks(one, chunks, like=x)

    chunks = conv_ops.batch_chunks(np, n, k * p * x.dtype.itemsize)
    w_mat = weight.reshape(1, o, k)
    w_t = np.ascontiguousarray(w_mat.transpose(0, 2, 1))

    def buffers(m):
        if getattr(local, "m", None) != m:
            local.m = m
            local.col = conv_ops.im2col(x[:m], (kh, kw), stride, padding).reshape(m, 1, k, p)
            local.dy = np.ascontiguousarray(dy[:m]).reshape(m, 1, o, p)
            local.y = np.empty((m, 1, o, p), x.dtype)
            local.dcol = np.empty((m, 1, k, p), x.dtype)
        return local

    def one(s):
        b = buffers(s.stop - s.start)
        conv_ops.product(np, w_mat, b.col, b.y)                       # forward
        conv_ops.weight_grad_t(np, b.col, b.dy)                      # dW
        np.matmul(w_t, b.dy, out=b.dcol)                               # dcol, before col2im

    return lambda: parallel.map_chunks(one, chunks, like=x)


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
    products = products_only(x, mr.weight.data, dy, s, p) if k > 1 else None
    product_times = []

    def run_products(record):
        if products is not None:
            t0 = time.perf_counter()
            products()
            if record:
                product_times.append(time.perf_counter() - t0)

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
    for _ in range(warmup):
        run_minires(False)
        run_torch(False)
        run_products(False)
    for r in range(rounds):
        order = (run_minires, run_torch) if r % 2 == 0 else (run_torch, run_minires)
        for fn in order + (run_products,):
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
    row["minires_products_ms"] = statistics.median(product_times) * 1e3 if product_times else None
    row["ratio_fwd"] = row["minires_fwd_ms"] / row["torch_fwd_ms"]
    row["ratio_bwd"] = row["minires_bwd_ms"] / row["torch_bwd_ms"]
    row["ratio_total"] = row["minires_total_ms"] / row["torch_total_ms"]
    # CPU time of the whole process (all threads): steadier than wall time on a
    # shared machine; with one thread it is the same quantity, less the waiting.
    row["ratio_total_cpu"] = row["minires_total_cpu_ms"] / row["torch_total_cpu_ms"]
    return row


def torch_step_ms(repeats=7):
    """Median wall time of torch's whole ResNet-20 train step (batch 128)."""
    step = make_torch_step("resnet20_train_step")
    step(), step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def rounds_for(shape, budget_s):
    """Enough alternating rounds to fill ~budget_s, between 5 and 30."""
    _, n, c, o, size, k, s, *_ = shape
    flops = 6.0 * n * o * c * k * k * (size // s) ** 2  # forward + two backward products
    est_s = flops / 20e9 + 0.01                         # a rough guess of one minires step
    return int(min(30, max(5, budget_s / (2 * est_s))))


def markdown_table(rows, threads):
    lines = [f"### {threads} thread(s)", "",
             "| shape | minires fwd ms | torch fwd ms | minires f+b ms | torch f+b ms "
             "| ratio fwd | ratio bwd | ratio f+b | ratio f+b CPU time "
             "| minires products ms | products / torch f+b |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        prod = r["minires_products_ms"]
        prod_cells = (f"{prod:.1f} | {prod / r['torch_total_ms']:.2f}" if prod is not None
                      else "- | -")
        lines.append(f"| {r['shape']} (N={r['batch']}) | {r['minires_fwd_ms']:.1f} | {r['torch_fwd_ms']:.1f} "
                     f"| {r['minires_total_ms']:.1f} | {r['torch_total_ms']:.1f} | {r['ratio_fwd']:.2f} "
                     f"| {r['ratio_bwd']:.2f} | {r['ratio_total']:.2f} | {r['ratio_total_cpu']:.2f} "
                     f"| {prod_cells} |")
    return "\n".join(lines)


def resnet20_total(rows):
    """Sum of f+b medians weighted by how often each shape occurs in ResNet-20."""
    def total(key):
        return sum((r[key] or 0.0) * r["resnet20_count"] for r in rows)
    return (total("minires_total_ms"), total("torch_total_ms"),
            total("minires_total_cpu_ms"), total("torch_total_cpu_ms"),
            total("minires_products_ms"))


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
        pin_threads(n_threads)
        rows = []
        for shape in SHAPES:
            row = bench_shape(shape, rounds_for(shape, args.budget), args.warmup, rng)
            row["threads"] = n_threads
            rows.append(row)
            print(f"[{n_threads} thr] {row['shape']:<28} minires {row['minires_total_ms']:8.1f} ms"
                  f"  torch {row['torch_total_ms']:8.1f} ms  ratio f+b {row['ratio_total']:.2f}"
                  f" (fwd {row['ratio_fwd']:.2f}, bwd {row['ratio_bwd']:.2f};"
                  f" CPU time {row['ratio_total_cpu']:.2f})", flush=True)
        mr_total, tc_total, mr_cpu, tc_cpu, mr_products = resnet20_total(rows)
        summary = (f"ResNet-20 convolutions (19 convs + 2 projection shortcuts, batch 128), "
                   f"one forward+backward: minires {mr_total:.0f} ms, torch {tc_total:.0f} ms, "
                   f"ratio {mr_total / tc_total:.2f} (CPU time ratio {mr_cpu / tc_cpu:.2f}); "
                   f"minires's matrix products alone (3x3 convs): {mr_products:.0f} ms")
        step_ms = torch_step_ms()
        summary += (f"\n\ntorch's whole ResNet-20 train step (option A, forward, loss, backward) "
                    f"on {n_threads} thread(s): {step_ms:.0f} ms; minires's 3x3 products alone are "
                    f"{mr_products / step_ms:.2f}x that")
        for row in rows:
            row["torch_resnet20_step_ms"] = step_ms
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
