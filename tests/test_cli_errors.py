"""A new user's usual mistakes, run as real commands in subprocesses: each ends
with one line, ``minires <command>: error: ...``, exit status 2, and no
traceback; ``--debug`` and ``MINIRES_DEBUG=1`` show the traceback; a bug
inside minires keeps its traceback."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minires.checkpoint import save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path, env=None, code=None):
    """``python -m minires ARGS`` (or ``python -c CODE ARGS``) in tmp_path."""
    full_env = dict(os.environ, PYTHONPATH=ROOT, MINIRES_CACHE=str(tmp_path / "cache"))
    full_env.pop("MINIRES_DEBUG", None)
    full_env.update(env or {})
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "minires"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=tmp_path,
                          env=full_env, timeout=120)


def _one_line_error(proc, command, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"minires {command}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_missing_data_folder(tmp_path):
    proc = _run(["train", "--data", str(tmp_path / "nowhere"), "--epochs", "1"], tmp_path)
    _one_line_error(proc, "train", "not found under", "nowhere", "--download")


def test_corrupt_data_archive(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tar.gz").write_bytes(b"\x1f\x8b" + os.urandom(200))  # gzip magic, then junk
    proc = _run(["train", "--data", str(data), "--epochs", "1"], tmp_path)
    _one_line_error(proc, "train", "train.tar.gz")


def test_eval_with_a_missing_checkpoint(tmp_path):
    proc = _run(["eval", "--checkpoint", "runs/none/last.ckpt"], tmp_path)
    _one_line_error(proc, "eval", "checkpoint not found", "runs/none/last.ckpt")


def test_eval_with_a_corrupt_checkpoint(tmp_path):
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint at all")
    proc = _run(["eval", "--checkpoint", "bad.ckpt"], tmp_path)
    _one_line_error(proc, "eval", "bad.ckpt", "not a minires checkpoint")


def test_eval_with_a_truncated_checkpoint(tmp_path):
    save_checkpoint(str(tmp_path / "t.ckpt"), {"w": np.arange(1000.0)})
    blob = (tmp_path / "t.ckpt").read_bytes()
    (tmp_path / "t.ckpt").write_bytes(blob[:len(blob) // 2])
    proc = _run(["eval", "--checkpoint", "t.ckpt"], tmp_path)
    _one_line_error(proc, "eval", "t.ckpt", "corrupt or truncated")


def test_resume_without_a_checkpoint(tmp_path):
    proc = _run(["train", "--resume", "--out", "runs/empty", "--data", "nowhere"], tmp_path)
    _one_line_error(proc, "train", "--resume", "runs/empty/last.ckpt")


def test_model_typo_is_reported_before_the_data_is_looked_for(tmp_path):
    proc = _run(["train", "--model", "resnet2O", "--data", str(tmp_path / "nowhere")], tmp_path)
    line = _one_line_error(proc, "train", "--model", "'resnet2O'", "resnet20")
    assert "not found" not in line


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--epochs", "0"),
                                         ("--lr", "-0.1"), ("--max-steps", "0"),
                                         ("--time-budget", "0"), ("--momentum", "1.5")])
def test_out_of_range_settings_are_reported_before_the_data(tmp_path, flag, value):
    proc = _run(["train", flag, value, "--data", str(tmp_path / "nowhere")], tmp_path)
    line = _one_line_error(proc, "train", flag, value)
    assert "not found" not in line


def test_eval_batch_size_zero(tmp_path):
    proc = _run(["eval", "--checkpoint", "x.ckpt", "--batch-size", "0"], tmp_path)
    _one_line_error(proc, "eval", "--batch-size")


def test_plot_without_matplotlib(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(
        {"epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "train_acc": 0.5, "test_acc": 0.5,
         "lr": 0.1}) + "\n")
    code = ("import sys; sys.modules['matplotlib'] = None  # as if not installed\n"
            "from minires.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = _run(["plot", str(run)], tmp_path, code=code)
    _one_line_error(proc, "plot", "matplotlib", "minires[plot]")


def test_plot_of_a_folder_that_is_not_a_run(tmp_path):
    proc = _run(["plot", str(tmp_path)], tmp_path)
    _one_line_error(proc, "plot", "metrics.jsonl")


def test_gradflow_module_with_an_unknown_model(tmp_path):
    full_env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "minires.gradflow", "--models", "foo"],
                          capture_output=True, text=True, cwd=tmp_path, env=full_env, timeout=120)
    _one_line_error(proc, "gradflow", "--models", "foo")


def test_a_run_folder_is_not_overwritten_without_resume(tmp_path):
    out = tmp_path / "runs" / "r"
    out.mkdir(parents=True)
    save_checkpoint(str(out / "last.ckpt"), {"epoch": 1})
    proc = _run(["train", "--out", str(out), "--data", "nowhere"], tmp_path)
    _one_line_error(proc, "train", "already holds a run", "--resume")
    assert (out / "last.ckpt").exists()


@pytest.mark.parametrize("how", [["--debug"], []], ids=["--debug", "MINIRES_DEBUG=1"])
def test_debug_shows_the_traceback(tmp_path, how):
    env = {} if how else {"MINIRES_DEBUG": "1"}
    proc = _run(["train", "--epochs", "0", *how], tmp_path, env=env)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr and "--epochs" in proc.stderr


def test_a_bug_keeps_its_traceback(tmp_path):
    code = ("import sys\n"
            "from minires import cli\n"
            "help_text, add, _ = cli.SUBCOMMANDS['summary']\n"
            "cli.SUBCOMMANDS['summary'] = (help_text, add, lambda args: {}['a bug'])\n"
            "sys.exit(cli.main(sys.argv[1:]))")
    proc = _run(["summary", "resnet20"], tmp_path, code=code)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "KeyError: 'a bug'" in proc.stderr


@pytest.mark.parametrize("argv", [["train", "--model", "foo", "--data", "nowhere"],
                                  ["summary", "foo"],
                                  ["gradflow", "--models", "foo", "--data", "nowhere"],
                                  ["eval", "--checkpoint", "foo.ckpt", "--data", "nowhere"]],
                         ids=["train", "summary", "gradflow", "eval"])
def test_one_message_for_an_unknown_model_name(tmp_path, argv):
    """One registry (minires.models.MODEL_NAMES), one error: every command
    names the unknown model and lists the same choices."""
    save_checkpoint(str(tmp_path / "foo.ckpt"), {"config": {"model": "foo"}, "model": {},
                                                 "epoch": 1})
    proc = _run(argv, tmp_path)
    _one_line_error(proc, argv[0], "unknown model 'foo'; choose one of: resnet18, resnet34")
