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
