"""Every core in one process: split a batch into chunks, run them on threads.

NumPy releases the GIL inside BLAS products, ufunc loops and copies, so the
chunks really run side by side; numpy's BLAS is set to ONE thread (once, on
the first parallel op), because splitting the batch beats OpenBLAS's own
threads on thin products.  The chunks depend only on the shapes and the
machine's core count, never on the thread count, and partial sums are added
in chunk order: results are bit-identical on any number of threads.  Why
each choice: docs/performance.md.

Only the functional ops use this module (conv, batch norm, ReLU, max
pooling); modules, blocks and the trainer read as on one core.  CuPy arrays
are never split (the GPU is one device; chunking would only add launches).

Thread count: ``set_num_threads(n)``, else the environment variable
``MINIRES_NUM_THREADS``, else every core this process may run on.
"""
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

ENV_VAR = "MINIRES_NUM_THREADS"
CHUNK_BYTES = 16 << 20  # the most a convolution chunk's buffers may take
PASS_CHUNK_BYTES = 1 << 20  # a chunk of a memory-bound pass (batch norm, ReLU)
MIN_CHUNK_BYTES = 256 << 10  # no chunk smaller than this (tiny arrays stay whole)

_num_threads = None  # (MIN_CHUNKS is set below available_cores)
_chosen = False  # set_num_threads was called (the default may then not change it)
_pool = None
_pool_lock = threading.Lock()
_blas_limited = False
_worker = threading.local()  # set inside pool workers: nested maps run inline


# ---------------------------------------------------------------- thread count

def available_cores():
    """The cores this process may run on (its CPU affinity), else cpu_count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Chunks per op, at least: 4 per core of the machine (8 at the least), so the
# chunks spread evenly over the cores, each core taking several.  A property
# of the machine, never of the thread count (see batch_chunks).
MIN_CHUNKS = max(8, 4 * available_cores())


def _parse_threads(value, source):
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(value).strip() != str(n):
        raise ValueError(f"{source}: expected a positive whole number of threads, got {value!r}")
    return n


def get_num_threads():
    """The number of threads minires's CPU ops use."""
    global _num_threads
    if _num_threads is None:
        env = os.environ.get(ENV_VAR, "").strip()
        _num_threads = _parse_threads(env, ENV_VAR) if env else available_cores()
    return _num_threads


def set_num_threads(n):
    """Use ``n`` threads (>= 1) for minires's CPU ops from now on."""
    global _num_threads, _pool, _chosen
    n = _parse_threads(n, "minires.set_num_threads")
    _chosen = True
    with _pool_lock:
        if _pool is not None and n != _num_threads:
            _pool.shutdown(wait=True)
            _pool = None
        _num_threads = n


def threads_were_chosen():
    """True when the user chose the thread count (set_num_threads or the
    environment variable), False while minires uses its default."""
    return _chosen or bool(os.environ.get(ENV_VAR, "").strip())


def share_cores(processes):
    """Default for ``processes`` ranks on one machine: each takes its share of
    the cores (MPI training), unless the user chose a thread count."""
    global _num_threads
    if not threads_were_chosen():
        _num_threads = max(1, available_cores() // max(1, processes))


# ---------------------------------------------------------------- BLAS threads

def blas_library_paths():
    """Paths of the BLAS libraries loaded in this process (OpenBLAS under its
    usual and its scipy-openblas names, MKL), from /proc/self/maps; not the
    ones a torch wheel ships in torch/lib (torch's threads are torch's
    business: tests and benchmarks run both)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f}
    except OSError:
        paths = set()
    paths = {p for p in paths if any(k in os.path.basename(p).lower() for k in ("blas", "mkl"))
             and "/torch/" not in p}
    return sorted(p for p in paths if p.startswith("/"))


def _blas_setters():
    """set_num_threads functions of the BLAS libraries loaded in this process."""
    names = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
             "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
             "MKL_Set_Num_Threads")
    setters = []
    for path in blas_library_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                setters.append(fn)
                break
    return setters


def limit_blas_threads():
    """Set numpy's BLAS to one thread (once): minires's threads use the cores.
    Without /proc (macOS, Windows), threadpoolctl is used when installed."""
    global _blas_limited
    if _blas_limited:
        return
    _blas_limited = True
    import numpy  # noqa: F401  (its BLAS must be loaded before we look for it)
    setters = _blas_setters()
    for fn in setters:
        fn(1)
    if not setters:
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(1, user_api="blas")
        except ImportError:
            pass


# ---------------------------------------------------------------- chunks

def batch_chunks(n, bytes_per_item, chunk_bytes=None):
    """Split ``range(n)`` into ``MIN_CHUNKS`` slices (4 per core of the machine,
    at least 8), or more where a slice would exceed ``chunk_bytes`` of work.

    Depends only on the shapes and the machine's core count, not on the
    thread count: that is what makes results bit-identical on any number of
    threads.  About 4 per core: each NumPy call hands the GIL over, so fewer,
    larger chunks waste less, and 4 per core still balance the load.  No
    chunk below ``MIN_CHUNK_BYTES``: tiny chunks cost more than they gain."""
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    per_item = max(1, bytes_per_item)
    spread = max(-(-n // MIN_CHUNKS), int(MIN_CHUNK_BYTES // per_item))
    size = max(1, min(n, int(chunk_bytes // per_item), spread))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def batch_slices(a, chunk_bytes=None):
    """Chunks of the batch (first) axis of ``a`` for a memory-bound pass over
    it (an elementwise op or a reduction), about ``chunk_bytes`` of ``a``
    each; one piece for a CuPy array.  Shape-determined, as batch_chunks."""
    n = a.shape[0] if a.ndim else 0
    if type(a).__module__.startswith("cupy") or n == 0:
        return [slice(None)]
    return batch_chunks(n, a.nbytes // n, PASS_CHUNK_BYTES if chunk_bytes is None else chunk_bytes)


def sum_in_order(parts):
    """parts[0] + parts[1] + ... in chunk order (a fixed order: the same bits
    on any thread count, unlike a reduction in completion order)."""
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def _get_pool(threads):
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="minires")
        return _pool


def map_chunks(fn, chunks, like=None):
    """``[fn(c) for c in chunks]``, run on ``get_num_threads()`` threads.

    The calling thread works too; results come back in chunk order.  Runs
    inline for one thread, one chunk, a CuPy array ``like``, or when called
    from inside a worker (no nested pools)."""
    chunks = list(chunks)
    threads = min(get_num_threads(), len(chunks))
    if like is not None and type(like).__module__.startswith("cupy"):
        threads = 1
    limit_blas_threads()
    if threads <= 1 or getattr(_worker, "active", False):
        return [fn(c) for c in chunks]

    results = [None] * len(chunks)
    next_index = iter(range(len(chunks)))
    take = threading.Lock()

    def work():
        _worker.active = True
        try:
            while True:
                with take:
                    i = next(next_index, None)
                if i is None:
                    return
                results[i] = fn(chunks[i])
        finally:
            _worker.active = False

    pool = _get_pool(get_num_threads())
    futures = [pool.submit(work) for _ in range(threads - 1)]
    error = None
    try:
        work()
    except BaseException as e:  # let the others finish before raising
        error = e
    for f in futures:
        try:
            f.result()
        except BaseException as e:
            error = error or e
    if error is not None:
        raise error
    return results
