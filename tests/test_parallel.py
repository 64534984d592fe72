"""minires.parallel: batch chunks on a thread pool, and what it promises.

The promise users see: the same seed gives the same training run on 1, 2 or
N threads (bit for bit, because the chunks depend only on the shapes), and
the ops give the same answers in many chunks as in one (to rounding).
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import minires
from minires import nn, optim, parallel
from minires.models.cifar import CifarResNet
from minires.models.cifar import BasicBlock
from minires.train import train_step
from tests.helpers import assert_close


@pytest.fixture(autouse=True)
def restore_threads():
    before = parallel.get_num_threads()
    yield
    parallel.set_num_threads(before)


# ---------------------------------------------------------------- chunks and the pool

@pytest.mark.parametrize("n, per_item, budget", [(128, 590_000, 4 << 20), (127, 1000, 4000),
                                                 (5, 10, 1), (1, 10**9, 10), (64, 1, 10**6)])
def test_batch_chunks_cover_the_batch_in_order(n, per_item, budget):
    chunks = parallel.batch_chunks(n, per_item, budget)
    covered = [i for s in chunks for i in range(s.start, s.stop)]
    assert covered == list(range(n))
    sizes = [s.stop - s.start for s in chunks]
    assert all(size >= 1 for size in sizes)
    assert len(set(sizes[:-1])) <= 1  # equal chunks, the last one may be shorter
    if n > 1 and per_item * n > budget:
        assert len(chunks) > 1


def test_map_chunks_runs_on_two_threads_at_once():
    # A barrier for two: it only opens when two chunks run at the same time.
    parallel.set_num_threads(2)
    barrier = threading.Barrier(2, timeout=10)
    seen = parallel.map_chunks(lambda i: (barrier.wait(), threading.get_ident())[1], [0, 1])
    assert len(set(seen)) == 2


def test_map_chunks_keeps_order_and_raises_the_workers_error():
    parallel.set_num_threads(2)
    assert parallel.map_chunks(lambda i: i * i, range(50)) == [i * i for i in range(50)]

    def fail_on_7(i):
        if i == 7:
            raise ZeroDivisionError("chunk 7")
        return i
    with pytest.raises(ZeroDivisionError, match="chunk 7"):
        parallel.map_chunks(fail_on_7, range(20))
    # the pool still works afterwards
    assert parallel.map_chunks(lambda i: -i, range(4)) == [0, -1, -2, -3]


def test_nested_map_runs_inline_without_deadlock():
    parallel.set_num_threads(2)
    out = parallel.map_chunks(lambda i: sum(parallel.map_chunks(lambda j: i * j, range(3))),
                              range(6))
    assert out == [3 * i for i in range(6)]


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, "", None])
def test_set_num_threads_rejects_what_is_not_a_positive_integer(bad):
    with pytest.raises(ValueError, match="positive whole number of threads"):
        minires.set_num_threads(bad)


def test_environment_variable_sets_the_default():
    code = "import minires; print(minires.get_num_threads())"
    env = dict(os.environ, MINIRES_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "3", out.stderr
    env.pop("MINIRES_NUM_THREADS")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(parallel.available_cores()), out.stderr


def test_numpy_blas_runs_one_thread_once_minires_ran_an_op():
    import threadpoolctl  # noqa: F401  (a test dependency: missing must fail, not skip)
    if parallel.available_cores() < 2:
        pytest.skip("one core: numpy's BLAS starts on one thread already")
    code = ("import numpy as np, minires, threadpoolctl\n"
            "from minires.nn.functional.activation import relu_forward\n"
            "def blas(): return [i['num_threads'] for i in threadpoolctl.threadpool_info() "
            "if i['user_api'] == 'blas']\n"
            "print(blas())\n"
            "relu_forward(np.ones((4, 3), np.float32))\n"
            "print(blas())")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.strip().splitlines()
    assert before != "[1]" and min(eval(before)) > 1, out.stdout  # BLAS had several threads ...
    assert after == "[1]", out.stdout                              # ... and now has one


@pytest.mark.parametrize("argv, env", [
    (["summary", "resnet20", "--threads", "0"], {}),
    (["summary", "resnet20", "--threads", "many"], {}),
    (["summary", "resnet20"], {"MINIRES_NUM_THREADS": "-2"}),
])
def test_commands_reject_a_bad_thread_count_in_one_line(argv, env):
    out = subprocess.run([sys.executable, "-m", "minires", *argv], capture_output=True,
                         text=True, env=dict(os.environ, **env))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("minires summary: error:") and "threads" in lines[0].lower()


# ---------------------------------------------------------------- same answers

def _short_run(threads, dtype, steps=3, batch=24):
    """A few SGD steps of a small ResNet (weight decay, Nesterov, label
    smoothing); returns every weight and buffer."""
    parallel.set_num_threads(threads)
    minires.manual_seed(0)
    model = CifarResNet(BasicBlock, [1, 1, 1], num_classes=10).to(dtype=np.dtype(dtype))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = optim.MultiStepLR(opt, [], 1.0)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    rng = np.random.default_rng(3)
    for _ in range(steps):
        x = rng.standard_normal((batch, 3, 16, 16)).astype(dtype)
        y = rng.integers(0, 10, batch)
        train_step(model, crit, opt, sched, x, y)
    return {k: np.array(v) for k, v in model.state_dict().items()}


@pytest.fixture
def many_chunks(monkeypatch):
    # small chunk budgets: every conv, batch norm and ReLU of the run above
    # splits its batch into several chunks (checked below)
    monkeypatch.setattr(parallel, "CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(parallel, "PASS_CHUNK_BYTES", 16 << 10)


def test_the_small_run_really_is_split(many_chunks):
    # the layers of _short_run: conv columns of 16 channels at 16x16 and BN/ReLU
    # passes over 16x16x16, float64
    assert len(parallel.batch_chunks(24, 16 * 9 * 16 * 16 * 8)) >= 4
    assert len(parallel.batch_slices(np.empty((24, 16, 16, 16)))) >= 4
    assert len(parallel.batch_slices(np.empty((24, 64, 4, 4)))) >= 2


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_one_and_two_threads_give_identical_training_runs(many_chunks, dtype):
    one, two = _short_run(1, dtype), _short_run(2, dtype)
    assert list(one) == list(two)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k], err_msg=k)


def test_many_chunks_agree_with_one_piece_in_float64(monkeypatch, many_chunks):
    split = _short_run(2, "float64")
    monkeypatch.setattr(parallel, "CHUNK_BYTES", 1 << 40)  # every batch in one piece
    monkeypatch.setattr(parallel, "PASS_CHUNK_BYTES", 1 << 40)
    monkeypatch.setattr(parallel, "MIN_CHUNKS", 1)
    assert len(parallel.batch_chunks(24, 16 * 9 * 16 * 16 * 8)) == 1
    whole = _short_run(1, "float64")
    for k in whole:
        assert_close(split[k], whole[k], 1e-10, what=k)


def test_maxpool_split_over_threads_matches_torch(monkeypatch):
    """MaxPool2d's chunks (several images per chunk, two threads) against
    torch, with overlapping windows (3x3, stride 2) and padding: the gradient
    of an input that two windows share is summed within its chunk."""
    import torch
    from minires.nn.functional.pool import maxpool2d_forward, maxpool2d_backward
    monkeypatch.setattr(parallel, "PASS_CHUNK_BYTES", 2 * 3 * 9 * 9 * 8)  # 2 images a chunk
    monkeypatch.setattr(parallel, "MIN_CHUNKS", 1)
    parallel.set_num_threads(2)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 3, 9, 9))
    assert len(parallel.batch_slices(x)) == 4
    y, cache = maxpool2d_forward(x, 3, 2, 1)
    dy = rng.standard_normal(y.shape)
    dx = maxpool2d_backward(dy, cache)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = torch.nn.functional.max_pool2d(tx, 3, 2, 1)
    ty.backward(torch.from_numpy(dy))
    assert_close(y, ty, 1e-12, "y")
    assert_close(dx, tx.grad, 1e-12, "dx")
