"""Data-parallel scaling over MPI: ResNet-20 at a global batch of 128 on one
process against two processes x 64, one BLAS thread per process.

    python -m benchmarks.bench_distributed [--steps 20] [--warmup 3] [--repeats 2]

Each configuration is a separate ``mpiexec -n P`` launch of this file in
``--worker`` mode (one BLAS thread per rank: OMP/OPENBLAS/MKL_NUM_THREADS=1
and threadpoolctl), alternating 1 process, 2 processes, 2 with sync BN, for
``--repeats`` rounds; medians over the steps and the rounds are reported.
Every rank trains on a fixed synthetic batch (its 64 or the whole 128 images
of 3x32x32): this times the step and its communication, not the loader.

Per step, rank 0 records:
  compute    forward + backward (with SyncBatchNorm's collectives inside, if on)
  wait       a barrier before the gradient allreduce: time lost waiting for
             the slower rank (load imbalance, a noisy neighbour), kept apart
             from the communication itself
  allreduce  the bucketed gradient allreduce (0.27 M float32 = 1.08 MB, one
             4 MB bucket)
  sync BN    the time inside SyncBatchNorm's allgathers and allreduces
  update     SGD step and reading the loss

It also writes a projection of the communication cost per step across
machines: a ring allreduce moves 2(P-1)/P x 1.08 MB per rank and pays
2(P-1) message latencies; SyncBatchNorm adds, per batch-norm layer, an
allgather ((P-1) latencies) and an allreduce of 2C numbers (2(P-1)).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

CONFIGS = [  # (name, processes, sync BN)
    ("1 process x 128", 1, False),
    ("2 processes x 64", 2, False),
    ("2 processes x 64, sync BN", 2, True),
]
# (name, Gbit/s, assumed per-message latency in seconds)
NETWORKS = [("1 GbE (TCP)", 1, 50e-6), ("10 GbE (TCP)", 10, 25e-6), ("25 GbE (TCP)", 25, 10e-6),
            ("100 Gbit/s InfiniBand/RoCE (RDMA)", 100, 2e-6)]
PROJECTED_WORLDS = (2, 4, 8)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---------------------------------------------------------------- worker (one rank)
def worker(args):
    import numpy as np
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    import minires
    from minires import nn, optim
    from minires.distributed import GradientAllreducer, MPIComm, broadcast_state
    from minires.distributed import convert_sync_batchnorm, shard_bounds
    from minires.train import build_model

    comm = MPIComm(timeout=600)
    minires.manual_seed(0)
    model = build_model(args.model)
    if args.sync_bn:
        model = convert_sync_batchnorm(model, comm)
    broadcast_state(model, comm)
    n_params = sum(p.data.size for p in model.parameters())
    n_bn = sum(1 for m in model.modules() if "BatchNorm" in type(m).__name__)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = optim.MultiStepLR(opt, [], 1.0)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    reducer = GradientAllreducer(model.parameters(), comm) if comm.world_size > 1 else None
    lo, hi = shard_bounds(args.batch_size, comm.rank, comm.world_size)
    rng = np.random.default_rng(comm.rank)
    x = rng.standard_normal((hi - lo, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, hi - lo)

    def bn_seconds():
        return sum(v["seconds"] for k, v in comm.stats.items() if "BatchNorm" in k)

    rows = []
    for step in range(args.warmup + args.steps):
        bn0 = bn_seconds()
        t0 = time.perf_counter()
        logits = model(x)
        loss = crit(logits, y)
        model.backward(crit.backward((hi - lo) / args.batch_size))
        t1 = time.perf_counter()
        if reducer is not None:
            comm.barrier("barrier (benchmark: waiting for the slower rank)")
        t2 = time.perf_counter()
        if reducer is not None:
            reducer.allreduce()
        t3 = time.perf_counter()
        opt.step()
        sched.step()
        opt.zero_grad()
        float(loss)
        t4 = time.perf_counter()
        if step >= args.warmup:
            rows.append({"step_s": t4 - t0, "compute_s": t1 - t0, "wait_s": t2 - t1,
                         "allreduce_s": t3 - t2, "update_s": t4 - t3,
                         "sync_bn_s": bn_seconds() - bn0})
    if comm.rank == 0:
        with open(args.worker_out, "w") as f:
            json.dump({"world_size": comm.world_size, "per_rank_batch": hi - lo,
                       "parameters": int(n_params), "batchnorm_layers": n_bn,
                       "gradient_bytes": int(n_params) * 4,
                       "buckets": len(reducer.buckets) if reducer else 0, "steps": rows}, f)
    comm.barrier()


# ---------------------------------------------------------------- parent
def find_mpiexec():
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(local, os.X_OK):
        return local
    import shutil
    found = shutil.which("mpiexec")
    if found is None:
        raise SystemExit("bench_distributed: no mpiexec found; pip install -e \".[mpi]\"")
    return found


def launch(args, processes, sync_bn, out_path):
    cmd = [find_mpiexec(), "-n", str(processes), sys.executable, "-m",
           "benchmarks.bench_distributed", "--worker", "--worker-out", out_path,
           "--model", args.model, "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if sync_bn:
        cmd.append("--sync-bn")
    env = dict(os.environ, PYTHONPATH=REPO, HYDRA_LAUNCHER="fork", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", **ONE_THREAD)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    with open(out_path) as f:
        return json.load(f)


def projection(n_params, n_bn, measured_1p_step_s):
    """Projected communication per step (seconds) for P ranks on each network."""
    nbytes = 4 * n_params
    rows = []
    for name, gbits, latency in NETWORKS:
        bandwidth = gbits * 1e9 / 8  # bytes/s
        for p in PROJECTED_WORLDS:
            grad = 2 * (p - 1) / p * nbytes / bandwidth + 2 * (p - 1) * latency
            sync_bn = n_bn * 3 * (p - 1) * latency  # latency-bound: a few hundred bytes each
            compute = measured_1p_step_s / p  # ideal per-rank compute at a fixed global batch
            rows.append({"network": name, "gbit_s": gbits, "latency_us": latency * 1e6,
                         "processes": p, "bytes_per_rank": 2 * (p - 1) / p * nbytes,
                         "gradient_allreduce_ms": 1e3 * grad, "sync_bn_ms": 1e3 * sync_bn,
                         "per_rank_compute_ms": 1e3 * compute,
                         "comm_share_pct": 100 * grad / (grad + compute),
                         "comm_share_sync_bn_pct": 100 * (grad + sync_bn) / (grad + sync_bn + compute)})
    return rows


def _median(rounds, key):
    return statistics.median(s[key] for r in rounds for s in r["steps"])


def summarise(results, batch):
    rows = []
    base = None
    for name, processes, sync_bn in CONFIGS:
        rounds = results[name]
        step = _median(rounds, "step_s")
        row = {"config": name, "processes": processes, "sync_bn": sync_bn,
               "per_rank_batch": rounds[0]["per_rank_batch"], "global_batch": batch,
               "step_s": step, "steps_per_s": 1 / step, "images_per_s": batch / step,
               "compute_s": _median(rounds, "compute_s"), "wait_s": _median(rounds, "wait_s"),
               "allreduce_s": _median(rounds, "allreduce_s"),
               "sync_bn_s": _median(rounds, "sync_bn_s"), "update_s": _median(rounds, "update_s"),
               "round_medians_step_s": [statistics.median(s["step_s"] for s in r["steps"])
                                        for r in rounds]}
        if base is None:
            base = step
        row["speedup"] = base / step
        row["efficiency_pct"] = 100 * base / step / processes
        rows.append(row)
    return rows


def markdown(rows, proj, meta, args):
    out = ["# Data-parallel scaling over MPI (bench_distributed)", "",
           f"{args.model}, global batch {args.batch_size}, one BLAS thread per process, fixed "
           f"synthetic batch; {args.steps} timed steps after {args.warmup} warm-up, "
           f"{args.repeats} alternating rounds, medians. {meta['parameters']:,} parameters = "
           f"{meta['gradient_bytes'] / 1e6:.2f} MB of float32 gradients per allreduce "
           f"({meta['buckets']} bucket).", "",
           "| configuration | step | steps/s | images/s | speedup | efficiency | compute | "
           "wait | allreduce | sync BN | update |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['config']} | {r['step_s']:.3f} s | {r['steps_per_s']:.2f} | "
                   f"{r['images_per_s']:.0f} | {r['speedup']:.2f}x | {r['efficiency_pct']:.0f}% | "
                   f"{r['compute_s']:.3f} s | {1e3 * r['wait_s']:.1f} ms | "
                   f"{1e3 * r['allreduce_s']:.2f} ms | {1e3 * r['sync_bn_s']:.1f} ms | "
                   f"{1e3 * r['update_s']:.1f} ms |")
    out += ["", "Efficiency = speedup / processes. *wait* is time at a barrier before the "
            "allreduce (the slower rank), *allreduce* the gradient allreduce itself (shared "
            "memory between two processes on this machine).", "",
            "## Projected communication per step across machines", "",
            "Ring allreduce of the gradients: 2(P-1)/P x size / bandwidth + 2(P-1) x latency; "
            "sync BN adds about 3(P-1) latencies per batch-norm layer "
            f"({meta['batchnorm_layers']} layers). Per-rank compute = the measured 1-process "
            "step / P (ideal strong scaling at global batch 128). Latencies are assumptions, "
            "typical of each network, not measurements.", "",
            "| network | latency | P | bytes per rank | gradient allreduce | sync BN extra | "
            "per-rank compute | comm share | with sync BN |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in proj:
        out.append(f"| {p['network']} | {p['latency_us']:.0f} us | {p['processes']} | "
                   f"{p['bytes_per_rank'] / 1e6:.2f} MB | {p['gradient_allreduce_ms']:.2f} ms | "
                   f"{p['sync_bn_ms']:.2f} ms | {p['per_rank_compute_ms']:.0f} ms | "
                   f"{p['comm_share_pct']:.1f}% | {p['comm_share_sync_bn_pct']:.1f}% |")
    return "\n".join(out)


def parent(args):
    from benchmarks.machine import machine_info, write_results
    info = machine_info()
    results = {name: [] for name, _, _ in CONFIGS}
    meta = None
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.repeats):
            for name, processes, sync_bn in CONFIGS:
                print(f"round {rnd + 1}/{args.repeats}: {name} ...", flush=True)
                res = launch(args, processes, sync_bn, os.path.join(tmp, "w.json"))
                results[name].append(res)
                if processes > 1:
                    meta = res
    rows = summarise(results, args.batch_size)
    proj = projection(meta["parameters"], meta["batchnorm_layers"], rows[0]["step_s"])
    md = markdown(rows, proj, meta, args)
    print(md)
    if not args.no_write:
        paths = write_results(args.results_name, rows, md, machine=info,
                              extra={"projection": proj, "settings": vars(args),
                                     "model_parameters": meta["parameters"]})
        print("wrote", *paths)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128, help="global batch")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="alternating rounds of all configs")
    p.add_argument("--results-name", default="bench_distributed")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--sync-bn", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    worker(args) if args.worker else parent(args)


if __name__ == "__main__":
    main()
