"""Checkpoints without pickle, and the one atomic-write helper."""
import hashlib
import os
import pickle
import stat

import numpy as np
import pytest

from minires import checkpoint
from minires.checkpoint import load_checkpoint, save_checkpoint
from minires.fileio import atomic_write, atomic_write_bytes


def _write_pickled(path, obj):
    """A checkpoint in the old (pickled) format, with a valid checksum."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    with open(path, "wb") as f:
        f.write(checkpoint.MAGIC_PICKLED + hashlib.sha256(payload).hexdigest().encode()
                + b"\n" + payload)


class _RunsCode:
    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_nested_state_round_trips_with_types(tmp_path):
    rng = np.random.default_rng(0)
    state = {"model": {"conv.weight": rng.standard_normal((2, 3)).astype(np.float32),
                       "bn.num_batches_tracked": np.array(7)},
             "optimizer": {"state": {0: {"momentum_buffer": np.arange(3.0)}, 5: {}},
                           "param_groups": [{"lr": 0.1, "nesterov": True, "params": [0, 5]}]},
             "rng": {"bit_generator": "PCG64", "state": {"state": 2**100 + 3, "inc": 17}},
             "shape": (3, 32, 32), "best": np.float64(0.25), "note": None, "__x": "kept"}
    path = tmp_path / "a.ckpt"
    save_checkpoint(path, state)
    back = load_checkpoint(path)
    assert back["model"]["conv.weight"].dtype == np.float32
    np.testing.assert_array_equal(back["model"]["conv.weight"], state["model"]["conv.weight"])
    np.testing.assert_array_equal(back["optimizer"]["state"][0]["momentum_buffer"], np.arange(3.0))
    assert back["optimizer"]["state"][5] == {} and back["optimizer"]["param_groups"][0]["params"] == [0, 5]
    assert back["rng"]["state"]["state"] == 2**100 + 3
    assert back["shape"] == (3, 32, 32) and back["note"] is None and back["__x"] == "kept"
    assert type(back["best"]) is np.float64 and back["best"] == 0.25
    assert path.read_bytes().startswith(checkpoint.MAGIC)  # the new, pickle-free format


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    evil = _RunsCode()
    evil.target = str(target)
    path = tmp_path / "evil.ckpt"
    _write_pickled(path, {"model": evil})
    with pytest.raises(ValueError, match="cannot be loaded safely.*refused to load"):
        load_checkpoint(path)
    assert not target.exists()


def test_an_old_pickled_checkpoint_of_arrays_still_loads(tmp_path):
    path = tmp_path / "old.ckpt"
    _write_pickled(path, {"model": {"w": np.arange(4.0, dtype=np.float32)}, "epoch": 3,
                          "dtype": np.dtype("float32"), "acc": np.float64(0.5)})
    back = load_checkpoint(path)
    np.testing.assert_array_equal(back["model"]["w"], np.arange(4.0, dtype=np.float32))
    assert back["epoch"] == 3 and back["acc"] == 0.5


def test_objects_are_refused_when_saving(tmp_path):
    with pytest.raises(TypeError, match="cannot store a object"):
        save_checkpoint(tmp_path / "x.ckpt", {"bad": object()})
    assert os.listdir(tmp_path) == []


def test_atomic_write_keeps_the_old_file_and_no_temp_on_failure(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_atomic_write_uses_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "g.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "g.bin").st_mode) == 0o640


# ---------------------------------------------------------------- disk full, kills

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(code, tmp_path, limit_bytes=None):
    """Run ``code`` in a fresh interpreter, optionally under a file-size limit
    (``ulimit -f``: a write past it fails with EFBIG, as a full disk does)."""
    import resource
    import subprocess
    import sys

    def limit():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT),
                          preexec_fn=limit, timeout=120)


def test_disk_full_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    save_checkpoint(str(path), {"epoch": 1, "w": np.arange(10.0)})
    before = path.read_bytes()
    code = ("import numpy as np\n"
            "from minires.checkpoint import save_checkpoint\n"
            "from minires.errors import DiskFullError\n"
            "try:\n"
            "    save_checkpoint('last.ckpt', {'epoch': 2, 'w': np.zeros(1_000_000)})\n"
            "except DiskFullError as e:\n"
            "    print('refused:', e)\n")
    proc = _child(code, tmp_path, limit_bytes=256 << 10)
    assert proc.returncode == 0, proc.stderr
    assert "refused: could not write" in proc.stdout and "last.ckpt" in proc.stdout
    assert "previous version is kept" in proc.stdout
    assert path.read_bytes() == before
    assert load_checkpoint(str(path))["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]  # no temp file left


def _kill_a_checkpoint_writer(folder, seed):
    """Start a process that rewrites last.ckpt in a loop, SIGKILL it at a
    random moment; returns the temp files it left."""
    import signal
    import subprocess
    import sys
    import time
    code = ("import numpy as np\n"
            "from minires.checkpoint import save_checkpoint\n"
            "for i in range(100000):\n"
            "    save_checkpoint('last.ckpt', {'i': i, 'w': np.full(300_000, float(i))})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=folder,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    path = folder / "last.ckpt"

    def inode():
        try:
            return os.stat(path).st_ino
        except FileNotFoundError:
            return None
    # wait for THIS writer's first rename (each write renames a new file into
    # place): a file left by an earlier writer must not start the clock while
    # this one is still importing numpy
    before, deadline = inode(), time.time() + 60
    while inode() in (None, before) and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(np.random.default_rng(seed).uniform(0.0, 0.4))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return [n for n in os.listdir(folder) if n.endswith(".tmp")]


@pytest.mark.parametrize("seed", range(4))
def test_a_kill_during_checkpoint_writes_leaves_a_loadable_file(tmp_path, seed):
    """A process rewrites one checkpoint in a loop and is SIGKILLed at a random
    moment: last.ckpt is always one whole checkpoint."""
    leftovers = _kill_a_checkpoint_writer(tmp_path, seed)
    state = load_checkpoint(str(tmp_path / "last.ckpt"))
    assert np.all(state["w"] == float(state["i"]))
    assert len(leftovers) <= 1


def test_the_temp_file_of_a_killed_write_is_removed_by_the_next_write(tmp_path):
    """Kill writers until one dies mid-write (the loop writes nearly all the
    time, so that takes a try or two), then: the next write of that path
    removes the temp file it left."""
    from minires.fileio import remove_stale_temps
    for seed in range(20):
        leftovers = _kill_a_checkpoint_writer(tmp_path, seed)
        if leftovers:
            break
    assert leftovers, "no kill in 20 landed during a write: nothing was tested"
    path = str(tmp_path / "last.ckpt")
    save_checkpoint(path, {"i": -1, "w": np.zeros(3)})  # the next write cleans up
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []
    assert remove_stale_temps(path) == []


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    from minires.fileio import remove_stale_temps
    mine = tmp_path / f".last.ckpt.{os.getpid()}.abc.tmp"   # this (live) process
    dead = tmp_path / ".last.ckpt.999999999.abc.tmp"        # no such process
    mine.write_bytes(b"x")
    dead.write_bytes(b"x")
    assert remove_stale_temps(str(tmp_path / "last.ckpt")) == [dead.name]
    assert mine.exists() and not dead.exists()
