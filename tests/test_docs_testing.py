"""docs/testing.md cannot rot: its python blocks run in order in one
namespace, the worked example's layer is the one minires ships, and the
failure it shows is the one check_module really reports."""
import os

import numpy as np
import pytest

from tests.test_docs import python_blocks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(REPO, "docs", "testing.md")


@pytest.fixture(scope="module")
def namespace():
    with open(PAGE, encoding="utf-8") as f:
        text = f.read()
    blocks = python_blocks(text)
    assert len(blocks) >= 5, "docs/testing.md lost its code"
    ns = {"__name__": "testing_page"}
    for line, source in blocks:
        exec(compile(source, f"{PAGE}:{line}", "exec"), ns)
    ns["__page__"] = text
    return ns


def test_the_pages_code_runs_in_order(namespace, capsys):
    assert "MyLeakyReLU" in namespace and "report" in namespace


def test_the_shown_failure_is_what_check_module_reports(namespace):
    report = namespace["report"]
    assert report.startswith("check_module [gradients_train]: gradcheck failed for "
                             "BrokenLeakyReLU")
    first_lines = report.splitlines()[:2]
    assert "input0" in first_lines[1] and "analytic 0, numeric" in first_lines[1]
    # the page shows the report as it is (the shrunk example is deterministic)
    for line in first_lines:
        assert line in namespace["__page__"], f"docs/testing.md shows a stale report: {line}"


def test_the_worked_example_is_the_shipped_layer(namespace):
    from minires import nn
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    x[0, 0] = 0.0  # the slope at exactly 0: torch's negative side
    dy = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    mine, shipped = namespace["MyLeakyReLU"](0.2), nn.LeakyReLU(0.2)
    np.testing.assert_array_equal(mine(x), shipped(x))
    np.testing.assert_array_equal(mine.backward(dy), shipped.backward(dy))


def test_leaky_relu_at_zero_and_infinities_matches_torch():
    import torch
    from minires import nn
    x = np.array([[-np.inf, -2.0, -0.0, 0.0, 3.0, np.inf]])
    dy = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    m = nn.LeakyReLU(0.1)
    y, dx = m(x), m.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.leaky_relu(tx, 0.1)
    ty.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())
    assert repr(m) == "LeakyReLU(negative_slope=0.1)"
