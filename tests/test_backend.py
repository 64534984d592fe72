"""minires.backend and minires.random: array modules, devices, seeded streams."""
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minires
from minires import backend, nn

ROOT = Path(__file__).resolve().parents[1]


def test_get_array_module_is_numpy_for_host_data():
    assert minires.get_array_module(np.zeros(3)) is np
    assert minires.get_array_module(np.zeros(3), np.ones(2)) is np
    assert minires.get_array_module([1.0, 2.0], 3.0) is np
    assert minires.get_array_module() is np


def test_to_device_cpu_is_a_no_op_for_numpy():
    a = np.arange(6.0).reshape(2, 3)
    assert minires.to_device(a, "cpu") is a
    assert minires.to_numpy(a) is a
    assert backend.device_of(a) == "cpu"


@pytest.mark.parametrize("name, expected", [("cpu", "cpu"), ("CPU", "cpu"), ("cuda", "cuda"),
                                            ("cuda:0", "cuda"), ("gpu", "cuda")])
def test_device_names_are_normalised(name, expected):
    assert backend.normalize_device(name) == expected


def test_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown device 'tpu': expected 'cpu' or 'cuda'"):
        minires.to_device(np.zeros(1), "tpu")


@pytest.mark.skipif(backend.cupy_or_none() is not None, reason="CuPy is installed")
def test_to_cuda_without_cupy_names_cupy():
    assert not minires.gpu_available()
    with pytest.raises(RuntimeError, match=r"device 'cuda' needs CuPy"):
        minires.to_device(np.zeros(2), "cuda")
    with pytest.raises(RuntimeError, match="CuPy"):
        nn.Linear(2, 2).to("cuda")


@pytest.mark.gpu
def test_round_trip_through_the_gpu():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    g = minires.to_device(a, "cuda")
    assert backend.device_of(g) == "cuda" and minires.get_array_module(g) is not np
    assert minires.to_device(g, "cuda") is g
    back = minires.to_numpy(g)
    assert isinstance(back, np.ndarray) and np.array_equal(back, a)


def test_manual_seed_makes_init_reproducible():
    minires.manual_seed(3)
    a = nn.Linear(5, 4)
    minires.manual_seed(3)
    b = nn.Linear(5, 4)
    minires.manual_seed(4)
    c = nn.Linear(5, 4)
    assert np.array_equal(a.weight.data, b.weight.data) and np.array_equal(a.bias.data, b.bias.data)
    assert not np.array_equal(a.weight.data, c.weight.data)


def test_streams_are_independent():
    """Drawing dropout masks must not change the next layer's initialisation."""
    minires.manual_seed(7)
    a = nn.Linear(5, 4)
    minires.manual_seed(7)
    nn.Dropout(0.5)(np.ones((10, 10), np.float32))
    b = nn.Linear(5, 4)
    assert np.array_equal(a.weight.data, b.weight.data)


def test_rng_state_round_trip_replays_the_same_draws():
    minires.manual_seed(11)
    nn.Linear(3, 3)  # advance the streams away from a fresh seed
    state = pickle.loads(pickle.dumps(minires.get_rng_state()))  # it must be picklable
    x = np.ones((8, 8), np.float32)
    first = (nn.Linear(3, 3).weight.data, nn.Dropout(0.5)(x))
    minires.set_rng_state(state)
    again = (nn.Linear(3, 3).weight.data, nn.Dropout(0.5)(x))
    assert all(np.array_equal(u, v) for u, v in zip(first, again))
    assert set(state) == set(minires.random.STREAMS)


def test_unknown_stream_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown random stream 'weights'"):
        minires.random.generator("weights")


def test_importing_minires_does_not_import_torch():
    code = "import minires, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
