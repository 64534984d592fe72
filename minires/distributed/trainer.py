"""Synchronous data-parallel training: the Trainer's workers strategy, one per MPI rank.

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
from ..checkpoint import load_checkpoint
from ..engine import NonFiniteLoss, build_model, probe_step_time
from ..interrupts import Interrupted
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


class MPIRanks:
    """The workers strategy of a data-parallel run: this process is one MPI
    rank with a full replica (``Trainer(cfg)`` picks it when ``cfg.distributed``).

    ``cfg.batch_size`` is the global batch; ``cfg.sync_bn`` turns every batch
    norm into a SyncBatchNorm; ``cfg.dist_timeout`` bounds every collective.
    """

    votes_every_step = False  # Ctrl-C is agreed on every 10 steps, with the metrics' sum

    def __init__(self, cfg, comm=None):
        self.comm = comm if comm is not None else make_communicator(cfg.device, cfg.dist_timeout)
        self.rank, self.world_size = self.comm.rank, self.comm.world_size
        self.is_main = self.rank == 0
        if cfg.device == "cpu" and hasattr(self.comm, "local_size"):
            # ranks on one machine share its cores (unless --threads/MINIRES_NUM_THREADS)
            parallel.share_cores(self.comm.local_size())

    # ---- setup
    def load_data(self, trainer):
        # rank 0 first: it decodes and caches an image archive once; the others
        # then read the cache instead of all decoding the same files at once
        if not self.is_main:
            self.comm.barrier("barrier (waiting for rank 0 to load the data)", DATA_LOAD_TIMEOUT)
        try:
            trainer.read_data()
        finally:
            if self.is_main:
                self.comm.barrier("barrier (waiting for rank 0 to load the data)",
                                  DATA_LOAD_TIMEOUT)
        self.sampler = DistributedSampler(len(trainer.train_data[1]), trainer.cfg.batch_size,
                                          self.rank, self.world_size, seed=trainer.cfg.seed)

    def steps_per_epoch(self, trainer, n):
        return len(self.sampler)

    def load_state(self, trainer):
        # rank 0 reads the checkpoint and sends it: no shared file system needed
        state = load_checkpoint(trainer.last_path) if self.is_main else None
        return self.comm.bcast_object(state, what="broadcast of the checkpoint")

    def build_model(self, trainer):
        cfg = trainer.cfg
        model = build_model(cfg.model)
        if cfg.sync_bn:
            model = convert_sync_batchnorm(model, self.comm)
        return model.to(cfg.device, dtype=np.dtype(cfg.dtype))

    def probe(self, trainer, images, labels):
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

        local = max(1, trainer.cfg.batch_size // self.world_size)
        st, ev = probe_step_time(trainer.model, trainer.cfg, images, labels, batch_size=local,
                                 step_fn=step)
        return self.comm.bcast_object((st, ev / self.world_size), what="broadcast of the probe")

    def after_setup(self, trainer):
        # every rank starts from rank 0's weights and buffers (and its resumed state)
        broadcast_state(trainer.model, self.comm)
        self.reducer = GradientAllreducer(trainer.model.parameters(), self.comm)
        ranks = f"{self.world_size} rank{'s' if self.world_size != 1 else ''}"
        trainer.log(f"distributed: {ranks} over {self.comm.backend_name}, global "
                    f"batch {trainer.cfg.batch_size} (per rank {self.sampler.local_sizes()[0]}), "
                    f"{'synchronised' if trainer.cfg.sync_bn else 'per-replica'} batch norm")

    # ---- the epoch
    def make_loader(self, trainer):
        cfg, (images, labels) = trainer.cfg, trainer.train_data
        self._local_n = self.sampler.local_sizes()
        self._global_n = self.sampler.global_sizes()
        return DistributedBatchLoader(images, labels, self.sampler, epoch=trainer.epoch,
                                      augment=cfg.augment, device=cfg.device, dtype=cfg.dtype,
                                      **trainer.loader_crop())

    def train_step(self, trainer, x, y, i):
        return distributed_train_step(trainer.model, trainer.crit, trainer.opt, trainer.sched,
                                      x, y, self.reducer, self._local_n[i], self._global_n[i])

    def sum(self, values):
        buf = np.asarray(values, dtype=np.float64)
        return list(self.comm.allreduce_(buf, what="allreduce of the training metrics"))

    def agree(self, value):
        return self.comm.bcast_object(value, what="broadcast of rank 0's decision")

    def evaluate(self, trainer):
        # Before evaluating (and before rank 0 saves the checkpoint), every rank
        # takes rank 0's weights and buffers: with per-replica batch norm the
        # running statistics differ by rank, and the run's model is rank 0's (as
        # torch DDP's broadcast_buffers).  The test set is then sharded and the
        # sums reduced: every rank gets the same numbers, in 1/world of the time.
        broadcast_state(trainer.model, self.comm)
        if trainer.eval_model is not trainer.model:  # --ema: the average's statistics too
            broadcast_state(trainer.eval_model, self.comm)
        images, labels = trainer.test_data
        lo, hi = shard_bounds(len(labels), self.rank, self.world_size)
        loss_sum = hits = 0.0
        if hi > lo:
            loss, acc = trainer.evaluate_on(images[lo:hi], labels[lo:hi])
            loss_sum, hits = loss * (hi - lo), round(acc * (hi - lo))
        loss_sum, hits, n = self.sum([loss_sum, hits, hi - lo])
        return loss_sum / n, hits / n

    def resume_command(self, out):
        return f"mpiexec -n {self.world_size} minires train --distributed --resume --out {out}"

    def resumed_elsewhere(self, state):
        """A line when the run goes on with another number of ranks (None if not)."""
        before = state.get("world_size", 1)
        if before == self.world_size:
            return None
        return (f"resumed on {self.world_size} rank{'s' * (self.world_size != 1)} (the run had "
                f"{before}): the same global "
                f"batch, order and schedule; the weights are not bit-identical to an "
                f"uninterrupted run (the gradient sums and per-replica batch norm are split "
                f"differently)")

    def run(self, body):
        try:
            return body()
        except NonFiniteLoss:
            raise  # decided from sums over the ranks: every rank raises it together
        except Interrupted as e:
            if getattr(e, "agreed", False):
                raise  # Ctrl-C or SIGTERM agreed by all ranks: rank 0 saved, all stop
            self._abort_all(e)
        except BaseException as e:
            # One rank failed alone (a full disk, a bug, Ctrl-C): the others would
            # wait in their next collective until the timeout.  End them all now.
            if isinstance(e, SystemExit) and not e.code:
                raise
            if not isinstance(e, KeyboardInterrupt):
                traceback.print_exc()
            self._abort_all(e)

    def _abort_all(self, e):
        print(f"minires distributed: rank {self.rank} of {self.world_size} failed "
              f"({type(e).__name__}: {e}); aborting all ranks", file=sys.stderr, flush=True)
        self.comm.abort(1)


__all__ = ["MPIRanks", "distributed_train_step", "make_communicator", "DATA_LOAD_TIMEOUT"]
