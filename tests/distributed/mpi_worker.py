"""Run under ``mpiexec -n 2``: ``python -m tests.distributed.mpi_worker SCENARIO OUT``.

Each rank saves what it computed under OUT; the tests (in the pytest process)
compare it with references they compute themselves (torch, or the
single-process minires run the distributed one must reproduce).

checks  the 2 x 64 vs 1 x 128 training, SyncBatchNorm's passes, the bucketed
        allreduce (one launch for the three: MPI start-up is the slow part)
die     rank 1 exits mid-run without a word
hang    rank 1 sleeps mid-run; rank 0 must give up after the timeout
"""
import os
import sys
import time

import numpy as np

import minires
from minires.distributed import (DistributedSampler, GradientAllreducer, MPIComm,
                                 SyncBatchNorm, broadcast_state, convert_sync_batchnorm,
                                 distributed_train_step, shard_bounds)
from minires.nn.module import Parameter
from tests.distributed import common


def _save(out, name, comm, arrays):
    np.savez(os.path.join(out, f"{name}_rank{comm.rank}.npz"), **arrays)


def train_consistency(comm, out, sync_bn, n, name):
    # rank 1 starts from other weights: broadcast_state must replace them by rank 0's
    model = common.tiny_resnet(seed=0 if comm.rank == 0 else 1000, dtype=common.CONSISTENCY_DTYPE)
    if sync_bn:
        model = convert_sync_batchnorm(model, comm)
    broadcast_state(model, comm)
    opt, sched, crit = common.make_training(model)
    reducer = GradientAllreducer(model.parameters(), comm)
    x, y = common.consistency_batches(n, common.CONSISTENCY_DTYPE)
    sampler = DistributedSampler(n, n, comm.rank, comm.world_size, shuffle=False)
    (lo, hi), = sampler.local_slices()
    for k in range(common.K_STEPS):
        distributed_train_step(model, crit, opt, sched, x[k, lo:hi], y[k, lo:hi], reducer,
                               hi - lo, n)
    _save(out, name, comm, {k: np.asarray(v) for k, v in model.state_dict().items()})


def sync_bn_passes(comm, out, dtype):
    weight, bias, x, grad = common.bn_case(dtype)
    lo, hi = shard_bounds(len(x), comm.rank, comm.world_size)
    bn = SyncBatchNorm(x.shape[1], momentum=0.1, process_group=comm).to(dtype=np.dtype(dtype))
    bn.weight.data[...] = weight
    bn.bias.data[...] = bias
    y = bn(x[lo:hi])
    dx = bn.backward(grad[lo:hi])
    bn.eval()
    y_eval = bn(x[lo:hi])
    _save(out, f"syncbn_{np.dtype(dtype).name}", comm, dict(
        y=y, dx=dx, dweight=bn.weight.grad, dbias=bn.bias.grad, running_mean=bn.running_mean,
        running_var=bn.running_var, num_batches_tracked=bn.num_batches_tracked, y_eval=y_eval))


def bucketed_allreduce(comm, out):
    params = [Parameter(np.zeros(s, dtype=np.float32)) for s in common.ALLREDUCE_SHAPES]
    for p, g in zip(params, common.allreduce_grads(comm.rank)):
        p.grad = g
    reducer = GradientAllreducer(params, comm, bucket_mb=common.ALLREDUCE_BUCKET_MB)
    before = comm.stats.get("gradient allreduce", {}).get("calls", 0)
    reducer.average()
    mpi_calls = comm.stats["gradient allreduce"]["calls"] - before
    arrays = {f"g{i}": p.grad for i, p in enumerate(params)}
    arrays.update(mpi_calls=mpi_calls, buckets=len(reducer.buckets), reducer_calls=reducer.calls)
    _save(out, "allreduce", comm, arrays)


def checks(comm, out):
    train_consistency(comm, out, True, common.GLOBAL_BATCH, "train_sync")
    train_consistency(comm, out, False, common.GLOBAL_BATCH, "train_local")
    train_consistency(comm, out, True, common.GLOBAL_BATCH - 1, "train_sync_uneven")
    for dtype in (np.float32, np.float64):
        sync_bn_passes(comm, out, dtype)
    bucketed_allreduce(comm, out)


def failure(comm, out, mode):
    model = common.tiny_resnet()
    broadcast_state(model, comm)
    opt, sched, crit = common.make_training(model)
    reducer = GradientAllreducer(model.parameters(), comm)
    x, y = common.consistency_batches(16)
    for k in range(10):
        if comm.rank == 1 and k == 2:
            print(f"rank 1: {mode} at step {k}", flush=True)
            if mode == "die":
                os._exit(1)
            time.sleep(600)
        distributed_train_step(model, crit, opt, sched, x[k % common.K_STEPS, :8],
                               y[k % common.K_STEPS, :8], reducer, 8, 16)
    print("not reached: the run finished", flush=True)


def main():
    scenario, out = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    minires.manual_seed(0)
    comm = MPIComm(timeout=timeout)
    if scenario == "checks":
        checks(comm, out)
    elif scenario in ("die", "hang"):
        failure(comm, out, scenario)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    comm.barrier()


if __name__ == "__main__":
    main()
