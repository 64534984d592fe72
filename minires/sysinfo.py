"""What decides minires's speed on this machine (``minires info``).

On the CPU: numpy's BLAS (which library, which kernel, how many threads),
minires's own thread count and where it came from, and the cores this
process may use.  On a GPU: CuPy and the device.  Across machines: MPI.

Why the BLAS kernel matters: OpenBLAS picks its matrix-product kernel for
the CPU it runs on, unless ``OPENBLAS_CORETYPE`` names one.  Some
environments set it (for old OpenBLAS builds) and so make a current numpy
run an older kernel: measured on a 2-core AVX-512 EPYC, OPENBLAS_CORETYPE=
Haswell made minires's ResNet-20 training step 1.4x slower than the native
SkylakeX kernel.  ``kernel_warning()`` says so in one line, with the fix;
``minires info`` and ``minires train`` print it.

Only the standard library and numpy: threadpoolctl is not needed (the
OpenBLAS functions are called through ctypes, as ``parallel`` does).
"""
import ctypes
import os
import platform
import sys

from . import parallel

# OpenBLAS kernels by the instruction set they need (a higher level is faster
# for float32 products); the ones OpenBLAS's DYNAMIC_ARCH picks on x86-64.
KERNEL_LEVEL = {"katmai": 1, "coppermine": 1, "northwood": 1, "prescott": 1, "core2": 1, "penryn": 1, "dunnington": 1, "nehalem": 1,
                "atom": 1, "opteron": 1, "barcelona": 1, "bobcat": 1, "sandybridge": 2,
                "bulldozer": 2, "piledriver": 2, "steamroller": 2, "excavator": 2,
                "haswell": 3, "zen": 3, "skylakex": 4, "cooperlake": 4, "sapphirerapids": 4}
LEVEL_NAMES = {1: "SSE", 2: "AVX", 3: "AVX2", 4: "AVX-512"}
BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _cpuinfo():
    """The first processor's fields in Linux's /proc/cpuinfo ("flags",
    "model name", "cpu family", ...), else an empty dict."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():  # the end of the first processor's block
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags():
    """The CPU's feature flags (Linux /proc/cpuinfo), else an empty set."""
    return set(_cpuinfo().get("flags", "").split())


def cpu_model():
    """The CPU's model name, else what ``platform`` knows."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_id():
    """x86 "family F model M stepping S" (virtual machines often name every
    AMD host "AMD EPYC": family 25 is Zen 3/4, 26 Zen 5), else None."""
    fields = _cpuinfo()
    if "cpu family" not in fields:
        return None
    return " ".join(f"{k.replace('cpu ', '')} {fields[k]}" for k in ("cpu family", "model", "stepping")
                    if k in fields)


def cpu_level(flags=None):
    """The widest vector instructions the CPU has, as a KERNEL_LEVEL (0: unknown)."""
    flags = cpu_flags() if flags is None else flags
    for level, flag in ((4, "avx512f"), (3, "avx2"), (2, "avx"), (1, "sse3")):
        if flag in flags:
            return level
    return 0


def _openblas_call(lib, names, restype):
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype, fn.argtypes = restype, []
            return fn()
    return None


def blas():
    """numpy's BLAS: {'library', 'config', 'kernel', 'threads', 'path'}; for a
    BLAS other than OpenBLAS, what numpy's build says."""
    import numpy
    numpy.ones((2, 2)) @ numpy.ones((2, 2))  # the BLAS is loaded by now
    for path in parallel.blas_library_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        variants = ("openblas_{}", "scipy_openblas_{}64_", "scipy_openblas_{}", "openblas_{}64_")
        config = _openblas_call(lib, [v.format("get_config") for v in variants], ctypes.c_char_p)
        if config is None:
            continue
        core = _openblas_call(lib, [v.format("get_corename") for v in variants], ctypes.c_char_p)
        threads = _openblas_call(lib, [v.format("get_num_threads") for v in variants], ctypes.c_int)
        return {"library": "OpenBLAS", "config": config.decode(errors="replace").strip(),
                "kernel": core.decode(errors="replace").strip() if core else None,
                "threads": threads, "path": path}
    try:
        deps = numpy.show_config(mode="dicts").get("Build Dependencies", {})
        name = deps.get("blas", {}).get("name", "unknown")
    except Exception:  # older numpy: no dict form
        name = "unknown"
    return {"library": name, "config": None, "kernel": None, "threads": None, "path": None}


def kernel_warning(info=None, environ=None, flags=None):
    """One line when OPENBLAS_CORETYPE makes numpy's BLAS run an older kernel
    than this CPU supports, with the fix; None otherwise."""
    environ = os.environ if environ is None else environ
    forced = environ.get("OPENBLAS_CORETYPE", "").strip()
    if not forced:
        return None
    info = blas() if info is None else info
    kernel = (info.get("kernel") or forced).lower()
    have, best = KERNEL_LEVEL.get(kernel), cpu_level(flags)
    if have is None or best <= have:
        return None
    unset = " ".join(f"-u {v}" for v in BLAS_VARIABLES if v in environ)
    return (f"warning: OPENBLAS_CORETYPE={forced} makes numpy's BLAS run its {info.get('kernel') or forced} "
            f"kernel ({LEVEL_NAMES.get(have, '?')}) on a CPU with {LEVEL_NAMES[best]}: training is "
            f"slower than it need be; unset it for minires (e.g. env {unset} minires ...)")


def thread_source():
    """How minires's thread count was chosen, in words."""
    env = os.environ.get(parallel.ENV_VAR, "").strip()
    if parallel._chosen:
        return "--threads / minires.set_num_threads"
    if env:
        return f"{parallel.ENV_VAR}={env}"
    return "default: every core this process may use"


def gpu():
    """CuPy and its devices, or why there are none."""
    try:
        import cupy
    except ImportError:
        return {"cupy": None, "devices": [], "note": "CuPy not installed (pip install minires[gpu])"}
    out = {"cupy": cupy.__version__, "devices": [], "note": None}
    try:
        for i in range(cupy.cuda.runtime.getDeviceCount()):
            p = cupy.cuda.runtime.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
            out["devices"].append(f"{i}: {name}, {p['totalGlobalMem'] / 2**30:.1f} GiB")
    except Exception as e:  # CuPy without a driver or a GPU
        out["note"] = f"no usable GPU ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return out


def mpi():
    """mpi4py and the MPI library, and this process's rank count if launched by mpirun."""
    ranks = next((os.environ[v] for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")
                  if v in os.environ), None)
    try:
        import mpi4py
    except ImportError:
        return {"mpi4py": None, "library": None, "ranks": ranks}
    try:
        from mpi4py import MPI
        library = MPI.Get_library_version().splitlines()[0].strip()
    except Exception as e:
        library = f"unavailable ({type(e).__name__})"
    return {"mpi4py": mpi4py.__version__, "library": library, "ranks": ranks}


def report():
    """Everything ``minires info`` prints, as a dict."""
    import numpy
    import minires
    info = blas()
    flags = cpu_flags()
    return {
        "minires": minires.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "numpy": numpy.__version__, "blas": info,
        "blas_warning": kernel_warning(info, flags=flags),
        "cpu": cpu_model(), "cpu_vector": LEVEL_NAMES.get(cpu_level(flags), "unknown"),
        "cores_usable": parallel.available_cores(), "cores_total": os.cpu_count(),
        "threads": parallel.get_num_threads(), "threads_from": thread_source(),
        "environment": {k: v for k, v in sorted(os.environ.items())
                        if k.startswith(("OPENBLAS_", "OMP_", "MKL_", parallel.ENV_VAR))},
        "gpu": gpu(), "mpi": mpi(),
    }


def format_report(r):
    b = r["blas"]
    kernel = f", kernel {b['kernel']}" if b["kernel"] else ""
    blas_threads = (f", {b['threads']} thread(s) now; minires sets it to 1 and runs its own "
                    f"threads" if b["threads"] is not None else "")
    lines = [f"minires {r['minires']}, Python {r['python']}, numpy {r['numpy']} ({r['platform']})",
             f"BLAS:    {b['library']}{kernel}{blas_threads}",
             f"         {b['config'] or '(no configuration string)'}",
             f"CPU:     {r['cpu']}, {r['cpu_vector']} vector instructions",
             f"cores:   {r['cores_usable']} usable by this process (of {r['cores_total']})",
             f"threads: minires uses {r['threads']} ({r['threads_from']})",
             "environment: " + (", ".join(f"{k}={v}" for k, v in r["environment"].items())
                                or "no OPENBLAS_*, OMP_*, MKL_* or MINIRES_* variable set")]
    g = r["gpu"]
    if g["cupy"] is None:
        lines.append(f"GPU:     {g['note']}")
    else:
        lines.append(f"GPU:     CuPy {g['cupy']}; " + ("; ".join(g["devices"]) or g["note"] or "no device"))
    m = r["mpi"]
    lines.append("MPI:     " + ("mpi4py not installed (pip install minires[mpi])" if m["mpi4py"] is None
                                else f"mpi4py {m['mpi4py']}, {m['library']}")
                 + (f"; launched with {m['ranks']} ranks" if m["ranks"] else ""))
    if r["blas_warning"]:
        lines.append(r["blas_warning"])
    return "\n".join(lines)


def main_text():
    return format_report(report())


if __name__ == "__main__":  # python -m minires.sysinfo
    print(main_text())
    sys.exit(0)
