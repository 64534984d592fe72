import pytest

from minires import backend


def pytest_collection_modifyitems(config, items):
    if backend.gpu_available():
        return
    reason = ("needs CuPy and a CUDA GPU: " +
              ("CuPy is not installed" if backend.cupy_or_none() is None else "no GPU visible"))
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not item.keywords: it holds the tests/gpu folder name too
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    import minires
    minires.manual_seed(0)
    yield
