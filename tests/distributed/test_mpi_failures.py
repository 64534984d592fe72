"""A rank that dies or hangs must end the whole job with an error, not hang it."""
import time

import pytest

from tests.distributed import common

pytestmark = pytest.mark.mpi

TIMEOUT_S = 5
OUR_MESSAGE = ("minires distributed: rank 0 of 2: timed out after 5 s waiting in gradient "
               "allreduce (bucket 1 of 1")


def _run(tmp_path, mode, launcher_options=()):
    t0 = time.perf_counter()
    res = common.worker(mode, tmp_path, str(TIMEOUT_S), timeout=120,
                        launcher_options=launcher_options)
    wall = time.perf_counter() - t0
    assert f"rank 1: {mode} at step 2" in res.stdout, res.stdout[-3000:]
    assert res.returncode != 0, res.stdout[-3000:]
    assert "not reached" not in res.stdout
    assert wall < 60, f"the job took {wall:.0f} s to end"
    return res.stdout, wall


def test_a_rank_that_dies_ends_the_job_at_once(tmp_path):
    """The launcher sees rank 1 exit without MPI_Finalize and ends rank 0 too,
    with rank 1's non-zero exit status (MPICH's hydra and Open MPI both)."""
    common.skip_without_mpi()
    _run(tmp_path, "die")


def test_a_rank_that_dies_is_reported_by_the_survivor(tmp_path):
    """With MPICH's cleanup off the survivor is not killed: it must notice by
    itself, naming the collective, its rank and the timeout, then abort."""
    common.skip_without_mpi()
    if not common.is_hydra():
        pytest.skip("-disable-auto-cleanup is an MPICH (hydra) option")
    out, wall = _run(tmp_path, "die", launcher_options=("-disable-auto-cleanup",))
    assert OUR_MESSAGE in out, out[-3000:]
    assert wall >= TIMEOUT_S


def test_a_rank_that_hangs_makes_the_others_abort_after_the_timeout(tmp_path):
    """Nothing but the deadline can notice a silent peer."""
    common.skip_without_mpi()
    out, wall = _run(tmp_path, "hang")
    assert OUR_MESSAGE in out, out[-3000:]
    assert "--dist-timeout 5 s" in out and "aborting all ranks" in out
    assert wall >= TIMEOUT_S
