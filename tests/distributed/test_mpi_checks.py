"""Two MPI ranks against one process: training steps, SyncBatchNorm, allreduce.

One ``mpiexec -n 2`` launch (module fixture) computes everything on the
ranks; each test compares a part of it with a reference computed here, in
the pytest process: the single-process minires run on the whole batch (the
consistency the issue asks for), torch's BatchNorm2d on the concatenated
batch, and a NumPy mean.
"""
import numpy as np
import pytest

from minires.distributed import shard_bounds
from minires.train import train_step
from tests.distributed import common
from tests.helpers import assert_close, rtol_for, torch_tensor

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory):
    common.skip_without_mpi()
    out = tmp_path_factory.mktemp("mpi_checks")
    res = common.worker("checks", out)
    assert res.returncode == 0, f"mpiexec failed ({res.returncode}):\n{res.stdout[-4000:]}"

    def load(name):
        return [dict(np.load(out / f"{name}_rank{r}.npz")) for r in range(common.WORLD)]
    return load


def _single_process(n):
    model = common.tiny_resnet(seed=0, dtype=common.CONSISTENCY_DTYPE)
    opt, sched, crit = common.make_training(model)
    x, y = common.consistency_batches(n, common.CONSISTENCY_DTYPE)
    for k in range(common.K_STEPS):
        train_step(model, crit, opt, sched, x[k], y[k])
    return model


# Three float64 SGD steps (see common.CONSISTENCY_DTYPE): summation order
# differs between the runs, so the weights agree to rounding noise (measured
# ~1e-15 of each tensor's scale), not bitwise.
STEPS_RTOL = 1e-10


@pytest.mark.parametrize("name, n", [("train_sync", common.GLOBAL_BATCH),
                                     ("train_sync_uneven", common.GLOBAL_BATCH - 1)])
def test_two_ranks_with_sync_bn_match_one_process_on_the_whole_batch(ranks_out, name, n):
    """2 x 64 (and 64 + 63) with SyncBatchNorm == 1 x 128 (127) after 3 steps:
    weights, running statistics and counters, on both ranks.  Rank 1 started
    from other weights, so this also checks the broadcast of rank 0's."""
    ref = _single_process(n).state_dict()
    rank0, rank1 = ranks_out(name)
    assert list(rank0) == list(ref)
    for key, want in ref.items():
        assert_close(rank0[key], want, STEPS_RTOL, what=f"{name} rank 0 {key}")
        np.testing.assert_array_equal(rank1[key], rank0[key], err_msg=f"{name}: ranks differ at {key}")


def test_without_sync_bn_the_runs_differ(ranks_out):
    """Per-replica batch norm normalises each half by its own statistics: a
    different computation, so the same comparison must fail (the check above
    can tell).  The replicas still share their weights exactly."""
    model = _single_process(common.GLOBAL_BATCH)
    ref = model.state_dict()
    rank0, rank1 = ranks_out("train_local")
    params = [k for k, _ in model.named_parameters()]
    worst = max(np.abs(rank0[k] - ref[k]).max() / np.abs(ref[k]).max() for k in params)
    assert worst > 100 * STEPS_RTOL, worst
    for k in params:
        np.testing.assert_array_equal(rank1[k], rank0[k])
    # the running statistics are each replica's own
    assert not np.array_equal(rank0["bn1.running_mean"], rank1["bn1.running_mean"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sync_batchnorm_equals_torch_batchnorm_on_the_concatenated_batch(ranks_out, dtype):
    """Forward, backward (random upstream gradient), running statistics and
    eval output of SyncBatchNorm over shards of 4 and 3 samples against
    torch.nn.BatchNorm2d on all 7."""
    import torch
    weight, bias, x, grad = common.bn_case(dtype)
    ranks = ranks_out(f"syncbn_{np.dtype(dtype).name}")
    ref = torch.nn.BatchNorm2d(x.shape[1], momentum=0.1).to(torch.float64 if dtype == np.float64
                                                            else torch.float32)
    with torch.no_grad():
        ref.weight.copy_(torch_tensor(weight))
        ref.bias.copy_(torch_tensor(bias))
    xt = torch_tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch_tensor(grad))
    ref.eval()
    y_eval = ref(torch_tensor(x)).detach()
    rtol = rtol_for(dtype)
    for r, got in enumerate(ranks):
        lo, hi = shard_bounds(len(x), r, len(ranks))
        assert got["y"].shape == (hi - lo,) + x.shape[1:]
        assert got["y"].dtype == dtype and got["dx"].dtype == dtype
        assert_close(got["y"], yt[lo:hi], rtol, what=f"rank {r} y")
        assert_close(got["dx"], xt.grad[lo:hi], rtol, what=f"rank {r} dx")
        assert_close(got["running_mean"], ref.running_mean, rtol, what=f"rank {r} running_mean")
        assert_close(got["running_var"], ref.running_var, rtol, what=f"rank {r} running_var")
        assert int(got["num_batches_tracked"]) == int(ref.num_batches_tracked)
        assert_close(got["y_eval"], y_eval[lo:hi], rtol, what=f"rank {r} eval y")
    # each rank's parameter gradient is its share; the shares add up to torch's
    assert_close(sum(g["dweight"] for g in ranks), ref.weight.grad, rtol, what="dweight")
    assert_close(sum(g["dbias"] for g in ranks), ref.bias.grad, rtol, what="dbias")


def test_bucketed_allreduce_averages_with_fewer_calls_than_parameters(ranks_out):
    rank0, rank1 = ranks_out("allreduce")
    n_params = len(common.ALLREDUCE_SHAPES)
    per_rank = [common.allreduce_grads(r) for r in range(common.WORLD)]
    for i in range(n_params):
        gs = [np.zeros(common.ALLREDUCE_SHAPES[i], np.float32) if g[i] is None else g[i]
              for g in per_rank]
        want = sum(g.astype(np.float64) for g in gs) / common.WORLD
        assert_close(rank0[f"g{i}"], want, 1e-6, what=f"parameter {i}")
        np.testing.assert_array_equal(rank1[f"g{i}"], rank0[f"g{i}"])
    for got in (rank0, rank1):
        # one MPI call per bucket: several buckets (512 bytes each), far fewer than tensors
        assert int(got["mpi_calls"]) == int(got["buckets"]) == int(got["reducer_calls"])
        assert 1 < int(got["mpi_calls"]) < n_params

