"""The fault matrix under `mpiexec -n 2 minires train --distributed`: Ctrl-C
stops every rank at the same step with rank 0 saving once; the run resumes
bit-identically on 2 ranks and goes on (saying so) on 1; a rank that stops
answering ends the job after --dist-timeout, naming it.

No fixed sleeps: the tests wait on the run folder and on the launcher's exit."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minires.checkpoint import load_checkpoint
from tests.data import tiny_cifar_folder
from tests.distributed import common
from tests.helpers import wait_for

pytestmark = pytest.mark.mpi
STEPS_PER_EPOCH = 30  # 240 images, global batch 8
EPOCHS = 3


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
    """240 training images, 40 test images."""
    return tiny_cifar_folder(tmp_path_factory.mktemp("mpi_interrupts") / "data")


def train_cmd(data, out, *extra, n=2):
    return [common.find_mpiexec(), "-n", str(n), sys.executable, "-m", "minires", "train",
            "--distributed", "--model", "resnet20", "--data", data, "--epochs", str(EPOCHS),
            "--batch-size", "8", "--lr", "0.05", "--out", out, "--no-progress", "--seed", "3",
            "--threads", "1", *extra]


def launch(cmd):
    return subprocess.Popen(cmd, cwd=common.ROOT, env=common.mpi_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_first_checkpoint(proc, out):
    wait_for(lambda: os.path.exists(os.path.join(out, "last.ckpt")), proc,
             "the first epoch's checkpoint")


def rank_pids(out):
    """The process ids of the ranks training into ``out`` (children of mpiexec)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if b"minires" in args and out.encode() in args and b"--distributed" in args \
                and not any(b"mpiexec" in a for a in args):
            pids.append(int(pid))
    return pids


def arrays(out):
    state = load_checkpoint(os.path.join(out, "last.ckpt"))
    return state, {**{f"model.{k}": v for k, v in state["model"].items()},
                   **{f"momentum.{i}": s["momentum_buffer"]
                      for i, s in state["optimizer"]["state"].items()}}


def test_ctrl_c_under_mpiexec_stops_all_ranks_and_the_run_resumes(tiny_cifar, tmp_path):
    common.skip_without_mpi()
    if not common.is_hydra():
        pytest.skip("how the launcher forwards Ctrl-C is checked with MPICH's hydra")
    full, out = str(tmp_path / "full"), str(tmp_path / "run")
    ref = subprocess.run(train_cmd(tiny_cifar, full), cwd=common.ROOT, env=common.mpi_env(),
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]

    proc = launch(train_cmd(tiny_cifar, out))
    wait_for_first_checkpoint(proc, out)
    time.sleep(np.random.default_rng(0).uniform(0.0, 1.0))  # a random step of epoch 2
    proc.send_signal(signal.SIGINT)  # the launcher forwards it to every rank
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    ours = [line for line in err.splitlines() if line.startswith("minires")]
    assert len(ours) == 1 and "Traceback" not in err, err  # rank 0 speaks for all
    m = re.fullmatch(r"minires train: interrupted (?:at epoch \d+ step (\d+)|at the end of epoch "
                     r"\d+ \(step (\d+)\)); saved (\S+); continue with: mpiexec -n 2 minires "
                     r"train --distributed --resume --out (\S+)", ours[0])
    assert m and m.group(3) == os.path.join(out, "last.ckpt") and m.group(4) == out, ours[0]
    step = int(m.group(1) or m.group(2))
    assert load_checkpoint(os.path.join(out, "last.ckpt"))["step"] == step < EPOCHS * STEPS_PER_EPOCH
    # the ranks agree at a reading of the metrics (every 10 steps): the same step for all
    assert step % 10 == 0

    # resumed on 2 ranks: the same run, bit for bit
    again = str(tmp_path / "again")
    subprocess.run(["cp", "-r", out, again], check=True)
    res = subprocess.run(train_cmd(tiny_cifar, again, "--resume"), cwd=common.ROOT,
                         env=common.mpi_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ref_state, ref_arrays = arrays(full)
    state, got = arrays(again)
    assert state["step"] == ref_state["step"] == EPOCHS * STEPS_PER_EPOCH
    assert list(got) == list(ref_arrays)
    for k in ref_arrays:
        np.testing.assert_array_equal(got[k], ref_arrays[k], err_msg=k)

    # resumed on 1 rank: the same global batch and schedule, said in one line
    res = subprocess.run(train_cmd(tiny_cifar, out, "--resume", n=1), cwd=common.ROOT,
                         env=common.mpi_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed on 1 rank (the run had 2): the same global batch" in res.stdout
    assert "distributed: 1 rank over mpi, global batch 8 (per rank 8)" in res.stdout
    state, _ = arrays(out)
    assert state["step"] == EPOCHS * STEPS_PER_EPOCH
    assert state["schedule"]["last_epoch"] == ref_state["schedule"]["last_epoch"]


def test_a_rank_killed_mid_run_ends_the_job_at_once_and_the_checkpoint_stays(tiny_cifar,
                                                                              tmp_path):
    """kill -9 of a rank: the launcher sees it die and ends the others (MPICH's
    hydra and Open MPI both), with a non-zero status and its own report."""
    common.skip_without_mpi()
    out = str(tmp_path / "run")
    proc = launch(train_cmd(tiny_cifar, out, "--dist-timeout", "30"))
    wait_for_first_checkpoint(proc, out)
    pids = rank_pids(out)
    assert len(pids) == 2, pids
    os.kill(max(pids), signal.SIGKILL)
    proc.communicate(timeout=120)  # (a guard against a hang; the launcher ends it at once)
    assert proc.returncode != 0
    state = load_checkpoint(os.path.join(out, "last.ckpt"))  # whole and loadable
    assert state["step"] >= STEPS_PER_EPOCH


def test_a_rank_that_stops_answering_ends_the_job_and_the_checkpoint_stays(tiny_cifar, tmp_path):
    common.skip_without_mpi()
    out, timeout = str(tmp_path / "run"), 5
    proc = launch(train_cmd(tiny_cifar, out, "--dist-timeout", str(timeout)))
    wait_for_first_checkpoint(proc, out)
    pids = rank_pids(out)
    assert len(pids) == 2, pids
    hung = max(pids)  # the rank started second: rank 1 with hydra, not certain elsewhere
    os.kill(hung, signal.SIGSTOP)
    t0 = time.time()
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        os.kill(hung, signal.SIGKILL)
    waited = time.time() - t0
    assert proc.returncode == 1, err
    assert waited >= timeout, waited  # ended by the deadline, not before it
    ours = [line for line in err.splitlines() if line.startswith("minires")]
    assert len(ours) == 1 and "Traceback" not in err, err
    assert re.fullmatch(r"minires distributed: rank \d of 2: timed out after 5 s waiting in .*"
                        r"\(--dist-timeout 5 s\); rank \d stopped answering \(died or hung\); "
                        r"aborting all ranks", ours[0]), ours[0]
    state = load_checkpoint(os.path.join(out, "last.ckpt"))  # whole and loadable
    assert state["step"] >= STEPS_PER_EPOCH
