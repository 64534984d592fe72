"""minires.distributed pieces that need no MPI: the sampler, the per-rank
loader, the batch-norm conversion, and the command line's errors."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minires.distributed import DistributedBatchLoader, DistributedSampler, shard_bounds
from tests.distributed import common
from tests.helpers import assert_close


def _epoch(n, batch, world, epoch, seed=0):
    """Every rank's index arrays for each step of one epoch."""
    return [DistributedSampler(n, batch, r, world, seed=seed).indices(epoch)
            for r in range(world)]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300), batch=st.integers(1, 64), world=st.integers(1, 5),
       epoch=st.integers(0, 3))
def test_sampler_covers_every_sample_once_with_equal_step_counts(n, batch, world, epoch):
    if batch < world or n < world:
        with pytest.raises(ValueError, match="DistributedSampler"):
            DistributedSampler(n, batch, 0, world)
        return
    per_rank = _epoch(n, batch, world, epoch)
    steps = {len(p) for p in per_rank}
    assert len(steps) == 1, "every rank must take the same number of steps"
    everything = np.concatenate([idx for p in per_rank for idx in p])
    assert np.array_equal(np.sort(everything), np.arange(n)), "each sample exactly once"
    sizes = DistributedSampler(n, batch, 0, world).global_sizes()
    for k in range(steps.pop()):
        shard = [len(p[k]) for p in per_rank]
        assert sum(shard) == sizes[k]
        assert min(shard) >= 1 and max(shard) - min(shard) <= 1, shard  # as even as possible
        assert sizes[k] <= batch or k == len(sizes) - 1  # only a folded-in tail is larger


@pytest.mark.parametrize("n, batch, world", [(128, 128, 2), (300, 128, 2), (257, 128, 2),
                                             (130, 64, 3), (1000, 100, 4), (129, 128, 2)])
def test_sampler_cases_including_uneven_last_batches(n, batch, world):
    per_rank = _epoch(n, batch, world, epoch=0)
    everything = np.concatenate([idx for p in per_rank for idx in p])
    assert np.array_equal(np.sort(everything), np.arange(n))
    sizes = DistributedSampler(n, batch, 0, world).global_sizes()
    if n % batch >= world or n % batch == 0:
        assert sizes == [batch] * (n // batch) + ([n % batch] if n % batch else [])
    else:  # a tail smaller than the world joins the batch before it
        assert sizes[-1] == batch + n % batch


def test_sampler_reshuffles_per_epoch_and_agrees_across_ranks():
    a = DistributedSampler(100, 10, 0, 2, seed=5)
    b = DistributedSampler(100, 10, 1, 2, seed=5)
    assert np.array_equal(a.order(0), b.order(0))            # one shared permutation
    assert not np.array_equal(a.order(0), a.order(1))        # a new one each epoch
    assert np.array_equal(a.order(1), DistributedSampler(100, 10, 0, 2, seed=5).order(1))
    assert not np.array_equal(a.order(0), DistributedSampler(100, 10, 0, 2, seed=6).order(0))
    # seed 0 at epoch 1 is not seed 1 at epoch 0 (no seed + epoch collision)
    assert not np.array_equal(DistributedSampler(100, 10, 0, 1, seed=0).order(1),
                              DistributedSampler(100, 10, 0, 1, seed=1).order(0))


def test_shard_bounds_split_evenly_in_rank_order():
    assert [shard_bounds(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [shard_bounds(2, r, 3) for r in range(3)] == [(0, 1), (1, 2), (2, 2)]


def test_loader_augmentation_differs_by_rank_and_is_fixed_by_the_seed():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 40)

    def batches(rank, world, seed=0, epoch=1):
        s = DistributedSampler(40, 16, rank, world, seed=seed)
        return list(DistributedBatchLoader(images, labels, s, epoch=epoch, augment=True,
                                           prefetch=0))
    two = [batches(r, 2) for r in range(2)]
    assert [len(b) for b in two] == [3, 3]
    assert [len(y) for _, y in two[0]] == [8, 8, 4] and [len(y) for _, y in two[1]] == [8, 8, 4]
    again = batches(0, 2)
    for (x, y), (x2, y2) in zip(two[0], again):                # deterministic from the seed
        assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(batches(0, 2, seed=1)[0][0], two[0][0][0])
    # a sample's crop and flip depend on its position, not on the world size:
    # the two ranks' shards, put together, are the one-rank batch
    one = batches(0, 1)
    for k in range(3):
        assert np.array_equal(np.concatenate([two[0][k][0], two[1][k][0]]), one[k][0])
        assert np.array_equal(np.concatenate([two[0][k][1], two[1][k][1]]), one[k][1])


def test_convert_sync_batchnorm_keeps_parameters_and_state_dict():
    """Same Parameter objects (an optimiser built before still updates them),
    same state_dict keys, torch's repr; without a process group it is plain
    batch norm."""
    from minires.distributed import SyncBatchNorm, convert_sync_batchnorm
    model = common.tiny_resnet()
    before = model.state_dict()
    params = model.parameters()
    converted = convert_sync_batchnorm(model, None)
    assert converted is model
    assert list(converted.state_dict()) == list(before)
    assert all(a is b for a, b in zip(converted.parameters(), params))
    assert isinstance(model.layer1[0].bn2, SyncBatchNorm)
    assert repr(model.bn1).startswith("SyncBatchNorm(16, eps=1e-05, momentum=0.1, affine=True")
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    assert_close(converted(x), common.tiny_resnet()(x), 1e-6, what="converted model")


def test_importing_minires_distributed_does_not_start_mpi():
    code = "import sys, minires.distributed; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=common.ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


def test_distributed_without_mpi4py_is_a_clear_error(monkeypatch, capsys, tmp_path):
    from minires.cli import main
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py -> ImportError
    assert main(["train", "--distributed", "--data", str(tmp_path), "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "needs mpi4py and an MPI library" in err and 'pip install -e ".[mpi]"' in err
    assert not (tmp_path / "o").exists()


def test_sync_bn_without_distributed_is_an_error(capsys, tmp_path):
    from minires.cli import main
    assert main(["train", "--sync-bn", "--data", str(tmp_path), "--no-progress"]) == 2
    assert "need --distributed" in capsys.readouterr().err
