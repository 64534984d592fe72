"""NCCLComm: the communicator interface of MPIComm over CuPy's NCCL bindings,
for one GPU per rank.

UNVERIFIED: this file is written against cupy.cuda.nccl's documented API but
has never run on a multi-GPU machine (none was available while it was
written); the CPU/MPI path is the tested one.  Treat a first multi-GPU run
as its test: compare it with a single-GPU run as tests/distributed does for
CPU ranks.

Design: MPI starts the job, gives each rank its local index (its GPU) and
broadcasts NCCL's unique id from rank 0; NCCL then carries the GPU arrays
(gradient buckets, SyncBatchNorm statistics, the initial weights).  Host
(NumPy) buffers and Python objects keep going over MPI.  NCCL calls are
enqueued on the current CUDA stream (so they follow the backward's kernels
in order); the host then polls a CUDA event with the same deadline as
MPIComm, and on timeout aborts the NCCL communicator and the MPI job.

Imported lazily (only for ``--device cuda --distributed``): CPU installs
never import CuPy or NCCL.
"""
import time

import numpy as np

from .. import backend
from .comm import DEFAULT_TIMEOUT, DistributedError


def _nccl_dtype(nccl, dtype):
    table = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
             np.dtype(np.float64): nccl.NCCL_FLOAT64, np.dtype(np.int32): nccl.NCCL_INT32,
             np.dtype(np.int64): nccl.NCCL_INT64, np.dtype(np.uint8): nccl.NCCL_UINT8}
    try:
        return table[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"NCCLComm: dtype {dtype} has no NCCL equivalent") from None


class NCCLComm:
    """UNVERIFIED.  GPU collectives over NCCL, host ones over ``mpi`` (an MPIComm)."""

    backend_name = "nccl"

    def __init__(self, mpi, timeout=DEFAULT_TIMEOUT):
        cp = backend.cupy_or_none()
        if cp is None or not backend.gpu_available():
            raise DistributedError("--device cuda --distributed needs CuPy with NCCL and a GPU "
                                   "per rank (pip install -e \".[gpu,mpi]\")")
        try:
            from cupy.cuda import nccl
        except ImportError as e:
            raise DistributedError(f"CuPy was built without NCCL ({e}); install the NCCL "
                                   "libraries for your CUDA (e.g. pip install nvidia-nccl-cu12)")
        self.cp, self.nccl_mod, self.mpi = cp, nccl, mpi
        self.rank, self.world_size = mpi.rank, mpi.world_size
        self.timeout = float(timeout)
        self.stats = mpi.stats
        ndev = cp.cuda.runtime.getDeviceCount()
        local = mpi.local_rank()
        if local >= ndev:
            raise DistributedError(f"rank {self.rank} is local rank {local} but this machine has "
                                   f"{ndev} GPUs: start at most one rank per GPU")
        cp.cuda.Device(local).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = mpi.bcast_object(uid, what="broadcast of the NCCL unique id")
        self.comm = nccl.NcclCommunicator(self.world_size, uid, self.rank)

    def __deepcopy__(self, memo):
        return self

    def __repr__(self):
        return f"NCCLComm(rank={self.rank}, world_size={self.world_size}, timeout={self.timeout:g})"

    def _stream(self):
        return self.cp.cuda.get_current_stream()

    def _wait(self, what, nbytes):
        """Poll an event recorded after the enqueued collective, under the deadline."""
        start = time.perf_counter()
        event = self.cp.cuda.Event(disable_timing=True)
        event.record(self._stream())
        pause = 0.0
        while not event.done:
            if time.perf_counter() - start > self.timeout:
                try:
                    self.comm.abort()  # frees this rank's kernels stuck in the collective
                finally:
                    self.mpi.fail(f"timed out after {self.timeout:g} s waiting in {what} (NCCL)")
            time.sleep(pause)
            pause = min(max(2 * pause, 2e-5), 1e-3)
        self.comm.check_async_error()
        kind = what.split(" (")[0] + " [nccl]"
        st = self.stats.setdefault(kind, {"calls": 0, "bytes": 0, "seconds": 0.0})
        st["calls"] += 1
        st["bytes"] += nbytes
        st["seconds"] += time.perf_counter() - start

    def _is_host(self, buf):
        return not backend.is_cupy_array(buf)

    def allreduce_(self, buf, what="allreduce"):
        if self._is_host(buf):
            return self.mpi.allreduce_(buf, what)
        ptr = buf.data.ptr
        self.comm.allReduce(ptr, ptr, buf.size, _nccl_dtype(self.nccl_mod, buf.dtype),
                            self.nccl_mod.NCCL_SUM, self._stream().ptr)
        self._wait(what, buf.nbytes)
        return buf

    def allgather(self, buf, what="allgather"):
        if self._is_host(buf):
            return self.mpi.allgather(buf, what)
        buf = self.cp.ascontiguousarray(buf)
        out = self.cp.empty((self.world_size,) + buf.shape, dtype=buf.dtype)
        self.comm.allGather(buf.data.ptr, out.data.ptr, buf.size,
                            _nccl_dtype(self.nccl_mod, buf.dtype), self._stream().ptr)
        self._wait(what, buf.nbytes)
        return out

    def bcast_(self, buf, root=0, what="broadcast"):
        if self._is_host(buf):
            return self.mpi.bcast_(buf, root, what)
        self.comm.bcast(buf.data.ptr, buf.size, _nccl_dtype(self.nccl_mod, buf.dtype), root,
                        self._stream().ptr)
        self._wait(what, buf.nbytes)
        return buf

    def bcast_object(self, obj, root=0, what="broadcast of an object", timeout=None):
        return self.mpi.bcast_object(obj, root, what, timeout)

    def barrier(self, what="barrier", timeout=None):
        self.mpi.barrier(what, timeout)

    def fail(self, why):
        self.mpi.fail(why)

    def abort(self, code=1):
        try:
            self.comm.abort()
        finally:
            self.mpi.abort(code)
