"""The MPI communicator: rank, world size and collectives with a deadline.

Every collective is started non-blocking (``Iallreduce``, ``Ibcast``, ...) and
polled with ``req.Test()`` and short sleeps, rather than called blocking.  A
blocking ``Allreduce`` whose peer died or hung waits forever; a polled one
notices its deadline, prints which collective, which rank and what timeout,
and calls ``MPI_Abort``, which makes the launcher (``mpiexec``) end every
rank of the job with a non-zero exit status.  Sleeping (instead of spinning)
also leaves the core to the other ranks while one waits for a slower peer,
which matters when ranks share a machine's cores.

mpi4py is imported only when a communicator is created: importing it starts
MPI, and ``import minires`` must work on machines without any MPI.
"""
import os
import pickle
import sys
import time

import numpy as np

from .. import backend

DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait for its peers
ABORT_GRACE_S = 1.0      # seconds between printing why and aborting the job


class DistributedError(RuntimeError):
    """A distributed run cannot start or cannot go on (no MPI, a dead peer...)."""


INSTALL_HINT = ("distributed training needs mpi4py and an MPI library: "
                "pip install -e \".[mpi]\" (mpi4py + the mpich wheel), then launch with "
                "mpiexec -n 2 minires train --distributed ...")


def import_mpi():
    """``mpi4py.MPI``, or a DistributedError that says what to install."""
    try:
        from mpi4py import MPI
    except ImportError as e:  # mpi4py missing, or it cannot find an MPI library
        raise DistributedError(f"{INSTALL_HINT} (import failed: {e})") from None
    except RuntimeError as e:  # mpi4py found no usable libmpi at import time
        raise DistributedError(f"{INSTALL_HINT} (MPI failed to start: {e})") from None
    return MPI


class MPIComm:
    """A thin, deadline-aware wrapper of an mpi4py communicator.

    Collectives work in place on NumPy arrays (CuPy arrays are staged through
    the host: plain MPI builds are not CUDA-aware; see ``NCCLComm`` for GPUs).
    ``stats`` counts the calls, bytes and seconds spent per kind of
    collective, for the tests and the benchmark.
    """

    backend_name = "mpi"

    def __init__(self, comm=None, timeout=DEFAULT_TIMEOUT, abort_on_timeout=True):
        self.MPI = import_mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = float(timeout)
        # Abort is the only way to end a job whose peer hangs inside MPI; tests of
        # the error path in a single process turn it off to get the exception.
        self.abort_on_timeout = abort_on_timeout
        self.stats = {}

    def __deepcopy__(self, memo):
        # A deep copy of a model (the trainer's speed probe) holds SyncBatchNorm
        # layers; the copy must talk to the same peers, not to a copied handle.
        return self

    def __repr__(self):
        return (f"MPIComm(rank={self.rank}, world_size={self.world_size}, "
                f"timeout={self.timeout:g})")

    # ---- the deadline
    def _wait(self, req, what, nbytes=0, timeout=None):
        timeout = self.timeout if timeout is None else float(timeout)
        start = time.perf_counter()
        pause = 0.0
        try:
            # Test() also drives MPI's progress engine (MPICH has no progress thread)
            while not req.Test():
                if time.perf_counter() - start > timeout:
                    self.fail(f"timed out after {timeout:g} s waiting in {what}")
                time.sleep(pause)
                # back off from 20 us to 1 ms: quick when peers are in step, cheap when not
                pause = min(max(2 * pause, 2e-5), 1e-3)
        except self.MPI.Exception as e:  # a peer's connection broke (it died)
            self.fail(f"MPI error in {what}: {e}")
        kind = what.split(" (")[0]
        st = self.stats.setdefault(kind, {"calls": 0, "bytes": 0, "seconds": 0.0})
        st["calls"] += 1
        st["bytes"] += nbytes
        st["seconds"] += time.perf_counter() - start

    def fail(self, why):
        """Report ``why`` with this rank's identity, then end the whole job."""
        peers = [r for r in range(self.world_size) if r != self.rank]
        who = (f"rank {peers[0]}" if len(peers) == 1 else
               f"one of ranks {', '.join(map(str, peers))}")  # (a collective cannot say which)
        msg = (f"minires distributed: rank {self.rank} of {self.world_size}: {why} "
               f"(--dist-timeout {self.timeout:g} s); {who} stopped answering (died or hung); "
               f"aborting all ranks")
        print(msg, file=sys.stderr, flush=True)
        if self.abort_on_timeout:
            self.abort(1)
        raise DistributedError(msg)

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        # The launcher forwards each rank's output through a pipe, and tears the
        # job down at once on MPI_Abort: without a pause the message just printed
        # can be lost with it (seen with MPICH's hydra).
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)
        os._exit(code)  # not reached: Abort does not return

    # ---- host staging for CuPy arrays (a plain MPI reads host memory only)
    @staticmethod
    def _host(buf):
        if backend.is_cupy_array(buf):
            return np.ascontiguousarray(backend.to_numpy(buf)), True
        if not buf.flags.c_contiguous:
            raise ValueError(f"MPIComm: collectives need a C-contiguous buffer, got "
                             f"strides {buf.strides} for shape {buf.shape}")
        return buf, False

    @staticmethod
    def _back(buf, host, staged):
        if staged:
            buf[...] = backend.get_array_module(buf).asarray(host)
        return buf

    # ---- collectives
    def allreduce_(self, buf, what="allreduce"):
        """In place: ``buf`` <- the sum of every rank's ``buf``."""
        host, staged = self._host(buf)
        req = self.comm.Iallreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        self._wait(req, what, host.nbytes)
        return self._back(buf, host, staged)

    def allgather(self, buf, what="allgather"):
        """Every rank's ``buf`` stacked: shape (world_size, *buf.shape)."""
        host, staged = self._host(buf)
        out = np.empty((self.world_size,) + host.shape, dtype=host.dtype)
        req = self.comm.Iallgather(host, out)
        self._wait(req, what, host.nbytes)
        return backend.get_array_module(buf).asarray(out) if staged else out

    def bcast_(self, buf, root=0, what="broadcast"):
        """In place: ``buf`` <- rank ``root``'s ``buf``."""
        host, staged = self._host(buf)
        req = self.comm.Ibcast(host, root=root)
        self._wait(req, what, host.nbytes)
        return self._back(buf, host, staged)

    def bcast_object(self, obj, root=0, what="broadcast of an object", timeout=None):
        """Rank ``root``'s picklable ``obj`` on every rank (size first, then bytes,
        both under the deadline; mpi4py's own ``bcast`` would block)."""
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if self.rank == root else b""
        size = np.array([len(payload)], dtype=np.int64)
        self._wait(self.comm.Ibcast(size, root=root), what, 8, timeout)
        data = np.frombuffer(payload, dtype=np.uint8).copy() if self.rank == root \
            else np.empty(int(size[0]), dtype=np.uint8)
        self._wait(self.comm.Ibcast(data, root=root), what, data.nbytes, timeout)
        return obj if self.rank == root else pickle.loads(data.tobytes())

    def barrier(self, what="barrier", timeout=None):
        self._wait(self.comm.Ibarrier(), what, 0, timeout)

    def _ask_this_machine(self, question):
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)  # the ranks on this machine
        try:
            return question(node)
        finally:
            node.Free()

    def local_rank(self):
        """This rank's index among the ranks on its machine (to pick a GPU)."""
        return self._ask_this_machine(lambda node: node.Get_rank())

    def local_size(self):
        """How many ranks run on this rank's machine (to share its cores)."""
        return self._ask_this_machine(lambda node: node.Get_size())
