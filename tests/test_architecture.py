"""The layers of the program, bottom up, as docs/architecture.md's "The layer map" describes
them: no module imports from a layer above its own, and no two modules
import each other (directly or round a longer loop), lazy imports inside
functions included.  Read from the source with ast, so nothing is imported."""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "minires")

# top-level part of minires -> layer (the map of docs/architecture.md, bottom up)
LAYERS = {
    "backend": 0, "random": 0, "grad_mode": 0, "errors": 0, "fileio": 0, "heap": 0,
    "parallel": 0, "kernels": 0, "recipes": 0, "sysinfo": 0, "interrupts": 0,
    "epoch_position": 0,
    "nn": 1, "gradcheck": 1, "gradcheck_targets": 1, "derivatives": 1, "summary": 1,
    "models": 2, "optim": 2, "testing": 2,
    "data": 3, "checkpoint": 3, "convert": 3, "plot": 3, "metrics": 3, "fold": 3,
    "onnx_export": 3,
    "engine": 4, "config": 4, "exercises": 4, "inference": 4, "budget": 4,
    "distributed": 5, "workers": 5,
    "train": 6, "epoch_meter": 6,
    "cmdline": 7, "cli": 7, "cli_train": 7, "cli_export": 7, "cli_predict": 7, "gradflow": 7,
    "tensorboard": 7, "__main__": 7,
}


def _modules():
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                yield (rel[:-len(".__init__")] if rel.endswith(".__init__") else rel), path


def _imports(module, path):
    """Every minires module that ``module`` imports, anywhere in the file."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - (node.level - 1)])
            if node.module:
                found.add(f"{base}.{node.module}")
            else:
                found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minires"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("minires"))
    return found


GRAPH = {m: _imports(m, p) for m, p in _modules()}


def _part(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_part_of_minires_has_a_layer():
    parts = {_part(m) for m in GRAPH} - {None}
    assert parts <= set(LAYERS), f"add to LAYERS (and docs/architecture.md's map): {sorted(parts - set(LAYERS))}"


def test_the_documented_map_names_every_part():
    import re
    path = os.path.join(os.path.dirname(ROOT), "docs", "architecture.md")
    text = open(path, encoding="utf-8").read()
    section = text[text.index("## The layer map"):text.index("\n## ", text.index("## The layer map") + 1)]
    missing = [p for p in LAYERS if not re.search(rf"(?<![\w.]){re.escape(p)}(?!\w)", section)]
    assert missing == [], f"docs/architecture.md's layer map does not name {missing}"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [(m, t) for m, targets in GRAPH.items() for t in targets
              if _part(m) and _part(t) and LAYERS[_part(t)] > LAYERS[_part(m)]]
    assert upward == []


def _resolve(target):
    """A module of GRAPH for an import target (``pkg.mod.name`` -> ``pkg.mod``)."""
    while target and target not in GRAPH:
        target = target.rsplit(".", 1)[0] if "." in target else ""
    return target or None


@pytest.mark.parametrize("pair", [("minires.train", "minires.distributed.trainer"),
                                  ("minires.cli", "minires.gradflow.command")])
def test_the_two_old_import_cycles_are_gone(pair):
    a, b = pair
    assert not ({_resolve(t) for t in GRAPH[a]} & {b} and {_resolve(t) for t in GRAPH[b]} & {a})


def test_no_import_cycles_between_modules():
    edges = {m: {r for r in map(_resolve, targets) if r and r != m and not m.startswith(r + ".")
                 and r != "minires"}
             for m, targets in GRAPH.items() if m != "minires"}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
