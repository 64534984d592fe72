"""What the MPI worker and the tests must agree on: the tiny model, the data,
the optimiser, and how to launch ``mpiexec -n 2`` on this machine.

Nothing here imports mpi4py (the pytest process never starts MPI)."""
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import minires
from minires import nn, optim
from minires.models.cifar import BasicBlock, CifarResNet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORLD = 2
K_STEPS = 3            # SGD steps of the consistency check
GLOBAL_BATCH = 128     # 2 ranks x 64 against 1 process x 128
IMAGE = 8              # 8x8 images keep a ResNet-8 step in milliseconds
BN_SHAPE = (7, 4, 5, 5)  # split 4 / 3 over two ranks: uneven on purpose
BN_WEIGHT_SEED, BN_DATA_SEED, BN_GRAD_SEED = 11, 12, 13
ALLREDUCE_SHAPES = [(3,), (4, 5), (7,), (2, 3, 3, 3), (1,), (100,), (16, 8), (5,), (9, 2), (33,),
                    (2, 2), (64,), (3, 7), (1, 1), (50,)]
ALLREDUCE_NONE = (1, 4)  # (rank, parameter) whose gradient is None: it must count as zero
ALLREDUCE_BUCKET_MB = 512 / 2 ** 20  # 512-byte buckets: several buckets, fewer than parameters


# The sharded-against-whole-batch training checks run in float64.  In float32
# the two runs sum in different orders, and over 8,000 ReLU inputs per layer a
# few sit within float32 rounding of 0: one flipped mask moved a BN bias
# gradient by 4e-3 (relative) after 3 steps, for a change of summation order
# alone, while float64 agrees to ~1e-15 (measured).  float64 makes the check
# one of the arithmetic, not of where the kinks happen to fall.
CONSISTENCY_DTYPE = np.float64


def tiny_resnet(seed=0, dtype=np.float32):
    """ResNet-8 (one BasicBlock per stage) with seeded weights."""
    minires.manual_seed(seed)
    return CifarResNet(BasicBlock, [1, 1, 1], num_classes=10).to(dtype=np.dtype(dtype))


def consistency_batches(n=GLOBAL_BATCH, dtype=np.float32):
    rng = np.random.default_rng(42)
    x = rng.standard_normal((K_STEPS, n, 3, IMAGE, IMAGE)).astype(dtype)
    y = rng.integers(0, 10, (K_STEPS, n))
    return x, y


def make_training(model):
    """The optimiser, schedule and loss of the consistency check (weight decay,
    Nesterov momentum and label smoothing: all of them must survive sharding)."""
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return opt, optim.MultiStepLR(opt, [], 1.0), nn.CrossEntropyLoss(label_smoothing=0.1)


def bn_case(dtype):
    """weight, bias, x, upstream gradient of the SyncBatchNorm check."""
    c = BN_SHAPE[1]
    w_rng = np.random.default_rng(BN_WEIGHT_SEED)
    weight = (1 + 0.3 * w_rng.standard_normal(c)).astype(dtype)
    bias = (0.2 * w_rng.standard_normal(c)).astype(dtype)
    # channel means far from zero: a sum-of-squares variance would lose digits here
    x = (3.0 + np.random.default_rng(BN_DATA_SEED).standard_normal(BN_SHAPE)).astype(dtype)
    grad = np.random.default_rng(BN_GRAD_SEED).standard_normal(BN_SHAPE).astype(dtype)
    return weight, bias, x, grad


def allreduce_grads(rank):
    rng = np.random.default_rng(100 + rank)
    grads = [rng.standard_normal(s).astype(np.float32) for s in ALLREDUCE_SHAPES]
    if rank == ALLREDUCE_NONE[0]:
        grads[ALLREDUCE_NONE[1]] = None
    return grads


# ---------------------------------------------------------------- launching
def find_mpiexec():
    """The mpiexec next to this Python (the mpich wheel's), else the one on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.access(local, os.X_OK) else shutil.which("mpiexec")


def skip_without_mpi():
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("needs mpi4py and an MPI library: pip install -e \".[mpi]\"")
    if find_mpiexec() is None:
        pytest.skip("needs an mpiexec (pip install -e \".[mpi]\" puts MPICH's next to python)")


def mpi_env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               # one BLAS thread per rank: two ranks share the cores
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               # MPICH (hydra): start the ranks by fork on this machine, no ssh
               HYDRA_LAUNCHER="fork",
               # Open MPI, if that is the mpiexec found: CI runs as root on few cores
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
    env.update(extra)
    return env


def is_hydra():
    """True for MPICH's launcher (hydra), which takes MPICH-only options."""
    out = subprocess.run([find_mpiexec(), "--version"], capture_output=True, text=True)
    return "hydra" in (out.stdout + out.stderr).lower()


def mpirun(args, timeout=60, n=WORLD, launcher_options=(), **env):
    """``mpiexec -n n <args>`` in the repository root; returns the CompletedProcess
    (stdout and stderr merged into .stdout)."""
    cmd = [find_mpiexec(), *launcher_options, "-n", str(n), *args]
    return subprocess.run(cmd, cwd=ROOT, env=mpi_env(**env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def worker(scenario, out_dir, *extra, timeout=60, n=WORLD, launcher_options=()):
    return mpirun([sys.executable, "-m", "tests.distributed.mpi_worker", scenario, str(out_dir),
                   *extra], timeout=timeout, n=n, launcher_options=launcher_options)
