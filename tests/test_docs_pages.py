"""The Python blocks of the site's prose pages run: Train and How it is built
(performance.md has none; the student's page and docs/testing.md have their
own tests; shell commands are parsed in test_docs_site.py).  Each block runs in a temporary folder with the files it
names made first, as a reader who followed the page would have them."""
import os

import numpy as np
import pytest

import minires
from tests.test_docs import python_blocks

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def _blocks(page):
    with open(os.path.join(DOCS, page), encoding="utf-8") as f:
        return python_blocks(f.read())


def _run(page, line, source, namespace):
    exec(compile(source, f"docs/{page}:{line}", "exec"), namespace)


def test_architecture_page_runs_a_model_in_reference_mode(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks("architecture.md")
    assert any("reference()" in source for _, source in blocks), "the reference-mode example is gone"
    for line, source in blocks:
        namespace = {}
        _run("architecture.md", line, source, namespace)
        if "reference()" in source:  # it ran the whole model on the plain ops
            assert namespace["logits"].shape == (2, 10) and namespace["dx"].shape == (2, 3, 32, 32)


def test_train_page_python_blocks_run(monkeypatch, tmp_path):
    """The export, ONNX and threads snippets of docs/train.md, with the files
    they read written first (r20.safetensors, r20.onnx) and ``x`` a batch."""
    pytest.importorskip("safetensors")
    pytest.importorskip("onnxruntime")
    from minires.onnx_export import export_onnx
    monkeypatch.chdir(tmp_path)
    model = minires.models.resnet20()
    minires.convert.save_safetensors(model, "r20.safetensors")
    export_onnx(model, "r20.onnx")
    threads = minires.get_num_threads()
    blocks = _blocks("train.md")
    assert len(blocks) >= 3, "docs/train.md lost its code"
    try:
        for line, source in blocks:
            namespace = {"x": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)}
            _run("train.md", line, source, namespace)
    finally:
        minires.set_num_threads(threads)
    assert os.path.exists("mine.safetensors")
