"""Synchronous data-parallel training: the Trainer's hooks, filled per MPI rank.

Every rank holds a full replica of the model and trains on its shard of each
global batch (DistributedSampler); after backward the gradients are summed
across the ranks (GradientAllreducer), so every replica applies the same
update and the replicas stay identical.  Only rank 0 writes the run folder
and prints; every rank computes the same metrics (sums over the ranks).

    mpiexec -n 2 minires train --distributed [--sync-bn] --batch-size 128 ...
"""
import sys
import traceback

import numpy as np

from .. import backend, parallel
from ..train import NonFiniteLoss, Trainer, _probe_step_time, build_model, evaluate
from .allreduce import GradientAllreducer, broadcast_state
from .comm import MPIComm
from .loader import DistributedBatchLoader
from .sampler import DistributedSampler, shard_bounds
from .sync_batchnorm import convert_sync_batchnorm

DATA_LOAD_TIMEOUT = 3600.0  # s: the other ranks wait while rank 0 decodes (and caches) the data


def make_communicator(device="cpu", timeout=None):
    """MPI for CPU ranks; NCCL (UNVERIFIED, see nccl.py) for GPU ranks, with MPI
    alongside it to start NCCL and to move host objects."""
    kw = {} if timeout is None else {"timeout": timeout}
    mpi = MPIComm(**kw)
    if backend.normalize_device(device) == "cuda":
        from .nccl import NCCLComm
        return NCCLComm(mpi, **kw)
    return mpi


def distributed_train_step(model, crit, opt, sched, x, y, reducer, local_n, global_n):
    """One synchronous SGD step on this rank's ``local_n`` of ``global_n`` samples.

    The global batch's loss is sum_r (n_r / n) * loss_r (each loss_r is the
    mean over rank r's shard), so this rank back-propagates ITS share,
    d loss_r scaled by n_r / n, and the allreduce SUMS the shares.  Every
    parameter then gets exactly the single-process gradient of the whole
    batch, even when the shards differ in size (the last batch of an epoch),
    and SyncBatchNorm's backward sums consistently scaled gradients.
    """
    logits = model(x)
    loss = crit(logits, y)
    model.backward(crit.backward(local_n / global_n))
    reducer.allreduce()
    opt.step()
    sched.step()
    opt.zero_grad()
    return loss, logits


class DistributedTrainer(Trainer):
    """A Trainer for one MPI rank of a data-parallel run (``cfg.distributed``).

    ``cfg.batch_size`` is the global batch; ``cfg.sync_bn`` turns every batch
    norm into a SyncBatchNorm; ``cfg.dist_timeout`` bounds every collective.
    """

    def __init__(self, cfg, train_data=None, test_data=None, log=print, comm=None):
        self.comm = comm if comm is not None else make_communicator(cfg.device, cfg.dist_timeout)
        self.rank, self.world_size = self.comm.rank, self.comm.world_size
        self.is_main = self.rank == 0
        if cfg.device == "cpu" and hasattr(self.comm, "local_size"):
            # ranks on one machine share its cores (unless --threads/MINIRES_NUM_THREADS)
            parallel.share_cores(self.comm.local_size())
        super().__init__(cfg, train_data, test_data, log=log if self.is_main else _silent)

    # ---- setup
    def _load_data(self):
        # rank 0 first: it decodes and caches an image archive once; the others
        # then read the cache instead of all decoding the same files at once
        if not self.is_main:
            self.comm.barrier("barrier (waiting for rank 0 to load the data)", DATA_LOAD_TIMEOUT)
        try:
            super()._load_data()
        finally:
            if self.is_main:
                self.comm.barrier("barrier (waiting for rank 0 to load the data)",
                                  DATA_LOAD_TIMEOUT)
        self.sampler = DistributedSampler(len(self.train_data[1]), self.cfg.batch_size,
                                          self.rank, self.world_size, seed=self.cfg.seed)

    def _steps_per_epoch(self, n):
        return len(self.sampler)

    def _load_state(self):
        # rank 0 reads the checkpoint and sends it: no shared file system needed
        state = super()._load_state() if self.is_main else None
        return self.comm.bcast_object(state, what="broadcast of the checkpoint")

    def _build_model(self):
        model = build_model(self.cfg.model)
        if self.cfg.sync_bn:
            model = convert_sync_batchnorm(model, self.comm)
        return model.to(self.cfg.device, dtype=np.dtype(self.cfg.dtype))

    def _probe(self, images, labels):
        # every rank times its own shard's step (with its allreduce) at the same
        # time, as in the run; rank 0's numbers are sent to all, so every rank
        # fits the same schedule.  Evaluation is sharded: per test image it costs
        # 1/world_size of one rank's time.
        reducers = {}

        def step(model, crit, opt, sched, x, y):
            if id(model) not in reducers:
                reducers[id(model)] = GradientAllreducer(model.parameters(), self.comm)
            return distributed_train_step(model, crit, opt, sched, x, y, reducers[id(model)],
                                          len(y), len(y) * self.world_size)

        local = max(1, self.cfg.batch_size // self.world_size)
        st, ev = _probe_step_time(self.model, self.cfg, images, labels, batch_size=local,
                                  step_fn=step)
        return self.comm.bcast_object((st, ev / self.world_size), what="broadcast of the probe")

    def _after_setup(self):
        # every rank starts from rank 0's weights and buffers (and its resumed state)
        broadcast_state(self.model, self.comm)
        self.reducer = GradientAllreducer(self.model.parameters(), self.comm)
        ranks = f"{self.world_size} rank{'s' if self.world_size != 1 else ''}"
        self.log(f"distributed: {ranks} over {self.comm.backend_name}, global "
                 f"batch {self.cfg.batch_size} (per rank {self.sampler.local_sizes()[0]}), "
                 f"{'synchronised' if self.cfg.sync_bn else 'per-replica'} batch norm")

    # ---- the epoch
    def _make_loader(self):
        cfg, (images, labels) = self.cfg, self.train_data
        self._local_n = self.sampler.local_sizes()
        self._global_n = self.sampler.global_sizes()
        return DistributedBatchLoader(images, labels, self.sampler, epoch=self.epoch,
                                      augment=cfg.augment, device=cfg.device, dtype=cfg.dtype)

    def _train_step(self, x, y, i):
        return distributed_train_step(self.model, self.crit, self.opt, self.sched, x, y,
                                      self.reducer, self._local_n[i], self._global_n[i])

    def _sum_over_ranks(self, values):
        buf = np.asarray(values, dtype=np.float64)
        return list(self.comm.allreduce_(buf, what="allreduce of the training metrics"))

    def _evaluate(self):
        # Before evaluating (and before rank 0 saves the checkpoint), every rank
        # takes rank 0's weights and buffers: with per-replica batch norm the
        # running statistics differ by rank, and the run's model is rank 0's (as
        # torch DDP's broadcast_buffers).  The test set is then sharded and the
        # sums reduced: every rank gets the same numbers, in 1/world of the time.
        broadcast_state(self.model, self.comm)
        cfg, (images, labels) = self.cfg, self.test_data
        lo, hi = shard_bounds(len(labels), self.rank, self.world_size)
        loss_sum = hits = 0.0
        if hi > lo:
            loss, acc = evaluate(self.model, images[lo:hi], labels[lo:hi], cfg.eval_batch_size,
                                 cfg.device, cfg.dtype)
            loss_sum, hits = loss * (hi - lo), round(acc * (hi - lo))
        loss_sum, hits, n = self._sum_over_ranks([loss_sum, hits, hi - lo])
        return loss_sum / n, hits / n

    def _agree(self, flag):
        return bool(self.comm.bcast_object(bool(flag), what="broadcast of the stop decision"))

    def run(self, resume=False):
        try:
            return super().run(resume)
        except NonFiniteLoss:
            raise  # decided from sums over the ranks: every rank raises it together
        except BaseException as e:
            # One rank failed alone (a full disk, a bug, Ctrl-C): the others would
            # wait in their next collective until the timeout.  End them all now.
            if isinstance(e, SystemExit) and not e.code:
                raise
            traceback.print_exc()
            print(f"minires distributed: rank {self.rank} of {self.world_size} failed "
                  f"({type(e).__name__}: {e}); aborting all ranks", file=sys.stderr, flush=True)
            self.comm.abort(1)


def _silent(*args, **kwargs):
    pass


__all__ = ["DistributedTrainer", "distributed_train_step", "make_communicator",
           "DATA_LOAD_TIMEOUT"]
