"""Tables for the documentation, read from the committed results.

The student's pages (docs/guide.md, docs/he/guide.md) show the measured
gradient flow, degradation and exercises as tables made here, at build time,
from ``benchmarks/results/*.json`` and ``*.md``: the numbers on the page are
the committed ones, never a copy typed into the page.  Each function returns
a ``Markdown`` object, which Jupyter and myst-nb display as a table (and
``print`` shows as text).
"""
import json
import os
import statistics

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class Markdown(str):
    """A string that notebooks (and myst-nb) render as Markdown."""

    def _repr_markdown_(self):
        return str(self)


def load(name):
    """The committed JSON result ``benchmarks/results/<name>.json``."""
    with open(os.path.join(RESULTS, f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)


def section(name, start=None, end="## Machine"):
    """Part of ``benchmarks/results/<name>.md``: from the line after its title
    (or from the first line starting with ``start``) up to the first line
    starting with ``end`` (exclusive)."""
    with open(os.path.join(RESULTS, f"{name}.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    first = 1 if start is None else next(i for i, l in enumerate(lines) if l.startswith(start))
    last = next((i for i in range(first + 1, len(lines)) if lines[i].startswith(end)),
                len(lines))
    return Markdown("\n".join(lines[first:last]).strip() + "\n")


def machine(name):
    """The ``## Machine`` list of a committed result, as one line."""
    text = section(name, start="## Machine", end="## ")
    items = [l[2:] for l in text.splitlines() if l.startswith("- ")]
    return Markdown("Machine: " + "; ".join(items) + ".\n")


def _fmt(x, digits=3):
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def gradflow_summary(name="gradflow"):
    """One row per measurement, one column per model and time (at
    initialisation, after the run's training steps), from ``<name>.json``."""
    data = load(name)
    steps = data["settings"]["steps"]
    columns, cells = [], []
    for model, runs in data["models"].items():
        for when, label in (("init", "init"), ("trained", f"{steps} steps")):
            columns.append(f"{model}, {label}")
            cells.append(_gradflow_column(runs[when]))
    rows = [("loss", "loss"),
            ("‖dL/dx‖ at the last block's input (depth {last})", "last"),
            ("‖dL/dx‖ at the first block's input (depth {first})", "first"),
            ("first / last", "ratio"),
            ("median gain per block, ‖dX‖ / ‖dY‖", "gain"),
            ("‖dL/dW‖ over the conv and linear layers", "dw"),
            ("median ‖dX_res‖ / ‖dX_skip‖", "res_skip"),
            ("median ‖dX_skip‖ / ‖dY‖ (what the final ReLU lets through)", "skip_dy")]
    depths = cells[0]["depths"]
    out = ["| measured on the probe batch | " + " | ".join(columns) + " |",
           "|---|" + "---:|" * len(columns)]
    for label, key in rows:
        out.append(f"| {label.format(**depths)} | " + " | ".join(c[key] for c in cells) + " |")
    return Markdown("\n".join(out) + "\n")


def _gradflow_column(profile):
    blocks = sorted(profile["blocks"], key=lambda b: b["depth"])
    first, last = blocks[0], blocks[-1]
    dws = [layer["grad_weight"] for layer in profile["layers"]]
    residual = [b for b in blocks if b["kind"] == "residual"]
    col = {
        "depths": {"first": first["depth"], "last": last["depth"]},
        "loss": f"{profile['loss']:.3f}",
        "last": f"{last['grad_input']:.2g}",
        "first": _fmt(first["grad_input"]),
        "ratio": _fmt(first["grad_input"] / last["grad_input"]),
        "gain": f"{statistics.median(b['grad_input'] / b['grad_output'] for b in blocks):.3g}",
        "dw": f"{_fmt(min(dws), 2)} to {_fmt(max(dws))}",
        "res_skip": "", "skip_dy": "",
    }
    if residual:
        col["res_skip"] = f"{statistics.median(b['grad_residual'] / b['grad_skip'] for b in residual):.2f}"
        col["skip_dy"] = f"{statistics.median(b['grad_skip'] / b['grad_output'] for b in residual):.2f}"
    return col
