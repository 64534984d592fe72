"""What machine a benchmark ran on, and how its results are written.

Every benchmark records ``machine_info()`` next to its numbers: timings mean
little without the CPU, the core count, the BLAS library and its threads.

    from benchmarks.machine import machine_info, write_results
"""
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Environment variables that change how fast the numerical libraries run.
_ENV_PREFIXES = ("OPENBLAS_", "OMP_", "MKL_", "GOTO_", "BLIS_", "MALLOC_", "CUDA_VISIBLE")


def _cpu_model():
    from minires.sysinfo import cpu_model
    return cpu_model()


def _cpu_id():
    from minires.sysinfo import cpu_id
    return cpu_id()


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count()


def _blas_info():
    """The BLAS numpy actually loaded (threadpoolctl), else numpy's build config."""
    try:
        from threadpoolctl import threadpool_info
        return [{k: v for k, v in lib.items() if k in ("user_api", "internal_api", "prefix",
                                                        "version", "architecture", "num_threads",
                                                        "threading_layer")}
                for lib in threadpool_info()]
    except Exception:
        pass
    try:
        import numpy
        cfg = numpy.show_config(mode="dicts")
        return [cfg.get("Build Dependencies", {}).get("blas", {})]
    except Exception:
        return []


def _torch_version():
    try:
        import torch
        return torch.__version__
    except Exception:
        return None


def _gpu():
    """Name of the first CUDA GPU (via CuPy, else nvidia-smi), or None."""
    try:
        from minires import backend
        cp = backend.cupy_or_none()
        if cp is not None and backend.gpu_available():
            props = cp.cuda.runtime.getDeviceProperties(0)
            name = props["name"]
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except Exception:
        pass
    return None


def machine_info():
    """A JSON-ready dict: CPU, cores, Python, numpy and its BLAS, torch, GPU, the
    threading/BLAS environment variables and the current load average."""
    import numpy
    return {
        "cpu_model": _cpu_model(),
        "cpu_id": _cpu_id(),
        "cpu_count": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "blas": _blas_info(),
        "torch": _torch_version(),
        "gpu": _gpu(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(_ENV_PREFIXES)},
        # other processes compete for the cores: a high load means noisy timings
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def machine_markdown(info):
    """A short markdown section describing ``info`` (from machine_info())."""
    blas = ", ".join(f"{b.get('internal_api', b.get('name', '?'))} {b.get('version', '')}"
                     f" ({b.get('architecture', '')}, {b.get('num_threads', '?')} threads)"
                     for b in info["blas"]) or "unknown"
    env = ", ".join(f"{k}={v}" for k, v in info["env"].items()) or "none set"
    return "\n".join([
        "## Machine",
        "",
        f"- CPU: {info['cpu_model']}{' (' + info['cpu_id'] + ')' if info.get('cpu_id') else ''} "
        f"({info['usable_cores']} usable of {info['cpu_count']} cores)",
        f"- Python {info['python']}, numpy {info['numpy']}, torch {info['torch']}",
        f"- BLAS/threads: {blas}",
        f"- GPU: {info['gpu'] or 'none'}",
        f"- Environment: {env}",
        f"- Load average (1, 5, 15 min) at the start: {info.get('load_average_1_5_15min')}",
        f"- Platform: {info['platform']}",
    ])


def _atomic_write(path, text):
    """Write through a temporary file in the same folder, then os.replace: a
    reader never sees half a file, even if the benchmark is interrupted."""
    from minires.fileio import atomic_write_bytes
    atomic_write_bytes(str(path), text.encode())


def write_results(name, rows, markdown, machine=None, extra=None):
    """Write benchmarks/results/<name>.json (rows + machine + time) and <name>.md
    (``markdown`` followed by the machine section).  Returns both paths."""
    machine = machine if machine is not None else machine_info()
    payload = {"benchmark": name,
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine, "rows": rows}
    if extra:
        payload.update(extra)
    json_path, md_path = RESULTS_DIR / f"{name}.json", RESULTS_DIR / f"{name}.md"
    _atomic_write(json_path, json.dumps(payload, indent=2, default=str) + "\n")
    _atomic_write(md_path, markdown.rstrip() + "\n\n" + machine_markdown(machine) + "\n")
    return json_path, md_path
