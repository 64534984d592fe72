"""`minires info` and the BLAS-kernel warning: run as real commands in
subprocesses, with OPENBLAS_CORETYPE set and unset (OpenBLAS reads it when
it loads, so only a new process shows its effect)."""
import json
import os
import subprocess
import sys
import types

import pytest

from minires import budget, sysinfo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _info(*args, **env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                            "MINIRES_NUM_THREADS")}
    env.update(env_changes)
    proc = subprocess.run([sys.executable, "-m", "minires", "info", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _openblas():
    return sysinfo.blas()["library"] == "OpenBLAS"


def test_info_names_blas_threads_cores_gpu_mpi():
    out = _info()
    for label in ("BLAS:", "CPU:", "cores:", "threads: minires uses", "GPU:", "MPI:"):
        assert label in out, out
    assert f"{len(os.sched_getaffinity(0))} usable by this process" in out
    assert "warning" not in out  # nothing forces an older kernel here


def test_info_json_and_thread_source():
    r = json.loads(_info("--json", MINIRES_NUM_THREADS="1"))
    assert r["threads"] == 1 and r["threads_from"] == "MINIRES_NUM_THREADS=1"
    assert r["environment"] == {"MINIRES_NUM_THREADS": "1"}
    assert r["cores_usable"] == len(os.sched_getaffinity(0))
    assert r["blas_warning"] is None


@pytest.mark.skipif(not _openblas(), reason="numpy's BLAS here is not OpenBLAS")
def test_forced_old_kernel_is_reported_with_the_fix():
    """Sandybridge (AVX) is older than any CPU with AVX2: the warning must appear.
    (Not Prescott: this OpenBLAS build runs Katmai for it, which hung with
    OPENBLAS_L2_SIZE set.)"""
    if sysinfo.cpu_level() < 3:
        pytest.skip("this CPU has no AVX2: Sandybridge is not older than what it supports")
    r = json.loads(_info("--json", OPENBLAS_CORETYPE="Sandybridge", OPENBLAS_L2_SIZE="1000000"))
    assert r["blas"]["kernel"].lower() == "sandybridge"
    assert r["environment"]["OPENBLAS_CORETYPE"] == "Sandybridge"
    assert "OPENBLAS_CORETYPE=Sandybridge" in r["blas_warning"]
    assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE" in r["blas_warning"]
    text = _info(OPENBLAS_CORETYPE="Sandybridge")
    assert text.strip().splitlines()[-1] == r["blas_warning"].replace(
        "-u OPENBLAS_L2_SIZE ", "")  # only the variables that are set are named


@pytest.mark.skipif(not _openblas(), reason="numpy's BLAS here is not OpenBLAS")
def test_native_kernel_matches_the_cpu():
    r = json.loads(_info("--json"))
    level = sysinfo.KERNEL_LEVEL.get(r["blas"]["kernel"].lower())
    assert level is not None and level <= max(sysinfo.cpu_level(), 1)


@pytest.mark.parametrize("kernel, flags, environ, warns", [
    ("Haswell", {"avx2", "avx512f"}, {"OPENBLAS_CORETYPE": "Haswell"}, True),
    ("Haswell", {"avx", "avx2"}, {"OPENBLAS_CORETYPE": "Haswell"}, False),  # the best it has
    ("SkylakeX", {"avx2", "avx512f"}, {"OPENBLAS_CORETYPE": "SkylakeX"}, False),
    ("Haswell", {"avx2", "avx512f"}, {}, False),  # not forced: OpenBLAS's own choice
    ("Mystery", {"avx2", "avx512f"}, {"OPENBLAS_CORETYPE": "Mystery"}, False),  # unknown name
])
def test_kernel_warning_rule(kernel, flags, environ, warns):
    got = sysinfo.kernel_warning({"kernel": kernel}, environ=environ, flags=flags)
    assert (got is not None) == warns
    if warns:
        assert got.startswith("warning: OPENBLAS_CORETYPE=Haswell") and "AVX-512" in got


def test_training_plan_line_carries_the_warning(monkeypatch):
    cfg = types.SimpleNamespace(fitted={"epochs": 2, "total_steps": 10, "steps_per_epoch": 5},
                                early_crop=None, time_budget=None, device="cpu")
    monkeypatch.setattr(sysinfo, "kernel_warning", lambda: "warning: forced kernel")
    lines = budget.plan_line(cfg, 1.0).splitlines()
    assert lines == ["plan: 2 epochs, 10 steps (5 per epoch)", "warning: forced kernel"]
    monkeypatch.setattr(sysinfo, "kernel_warning", lambda: None)
    assert budget.plan_line(cfg, 1.0) == "plan: 2 epochs, 10 steps (5 per epoch)"
