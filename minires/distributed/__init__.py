"""Synchronous data-parallel training over MPI (mpi4py), and over NCCL for GPUs
(UNVERIFIED: see nccl.py).

    mpiexec -n 2 minires train --distributed [--sync-bn] --batch-size 128 ...

* ``MPIComm``: rank, world size and collectives that give up after a deadline
  (``--dist-timeout``) with a message naming the collective and the rank,
  then abort the whole job: a dead or hung peer never hangs the others.
* ``DistributedSampler``: one shared permutation per epoch from (seed, epoch);
  each global batch split across the ranks, every sample once per epoch.
* ``GradientAllreducer``: gradients summed across ranks in ~4 MB buckets.
* ``SyncBatchNorm`` / ``convert_sync_batchnorm``: torch's synchronised batch norm.
* ``MPIRanks``: the Trainer's workers strategy for one rank (``Trainer(cfg)``
  picks it when ``cfg.distributed``); only rank 0 writes files and prints.

Importing this package does not import mpi4py (that starts MPI): a
communicator does, when created.
"""
from .allreduce import GradientAllreducer, broadcast_state
from .comm import DEFAULT_TIMEOUT, DistributedError, MPIComm, import_mpi
from .loader import DistributedBatchLoader
from .sampler import DistributedSampler, shard_bounds
from .sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm
from .trainer import MPIRanks, distributed_train_step, make_communicator


__all__ = ["MPIComm", "DistributedError", "DEFAULT_TIMEOUT", "import_mpi", "DistributedSampler",
           "shard_bounds", "DistributedBatchLoader", "GradientAllreducer", "broadcast_state",
           "SyncBatchNorm", "convert_sync_batchnorm", "MPIRanks",
           "distributed_train_step", "make_communicator"]
