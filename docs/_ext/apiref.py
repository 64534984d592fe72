"""The API reference's pages, written at build time from the packages themselves.

``public_names(module)`` is the one definition of "public" (``__all__`` where a
module has one, else the functions and classes it defines and its
subpackages' modules); ``write_pages`` writes one page per documented module
into ``docs/api/`` listing every such name in an ``autosummary`` table, so a
name added to ``__all__`` appears in the reference without anyone listing it,
and numpydoc's GL08 check fails the build for one without a docstring.
tests/test_docs_site.py uses the same function.
"""
import importlib
import inspect
import os
import pkgutil

# The modules the reference documents, in the order of its index page.
MODULES = ("minires", "minires.nn", "minires.nn.functional", "minires.models",
           "minires.optim", "minires.data", "minires.testing", "minires.gradcheck")

# Names left out of the reference (conf.py skips them; tests/test_docs_site.py
# reads the same list): none now.
SKIPPED_UNTIL_FIXED = {}

TITLES = {
    "minires": "minires: the top level",
    "minires.nn": "minires.nn: layers, blocks, the module contract",
    "minires.nn.functional": "minires.nn.functional: the pure forward/backward ops",
    "minires.models": "minires.models: ResNets, plain nets, AlexNet",
    "minires.optim": "minires.optim: SGD, schedules, EMA",
    "minires.data": "minires.data: CIFAR-10, augmentation, the loader",
    "minires.testing": "minires.testing: the property-based kit for your own layers",
    "minires.gradcheck": "minires.gradcheck: finite and complex-step differences",
}


def public_names(module_name):
    """The public names of ``module_name``, in a stable order."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    out = []
    if hasattr(module, "__path__"):  # a package without __all__: its modules
        out += [f"{m.name}" for m in pkgutil.iter_modules(module.__path__)
                if not m.name.startswith("_")]
    out += [n for n, obj in vars(module).items()
            if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == module_name]
    return out


def resolve(module_name, name):
    """The object ``module_name.name`` (importing a submodule when it is one)."""
    module = importlib.import_module(module_name)
    try:
        return getattr(module, name)
    except AttributeError:
        return importlib.import_module(f"{module_name}.{name}")


def kind(obj):
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "data"


def _page(module_name):
    module = importlib.import_module(module_name)
    title = TITLES[module_name]
    lines = [title, "=" * len(title), "",
             f".. automodule:: {module_name}", "   :no-members:", "",
             f".. currentmodule:: {module_name}", ""]
    groups = {"module": [], "class": [], "function": [], "data": []}
    for name in public_names(module_name):
        obj = resolve(module_name, name)
        if f"{module_name}.{name}" in MODULES:  # a module with its own page
            # (minires.gradcheck is also the function of that name: documented there)
            groups["module"].append((name, f"{module_name}.{name}", True))
        else:
            groups[kind(obj)].append((name, obj, False))
    headings = {"module": "Modules", "class": "Classes", "function": "Functions",
                "data": "Constants"}
    for key, entries in groups.items():
        if not entries:
            continue
        lines += [headings[key], "-" * len(headings[key]), ""]
        documented_elsewhere = [e for e in entries if e[2]]
        if documented_elsewhere:
            lines += [f"* :doc:`{full}` (its own page)" for _, full, _ in documented_elsewhere]
            lines.append("")
        rest = [e for e in entries if not e[2]]
        if not rest:
            continue
        if key == "data":  # constants have no docstring of their own: show their values
            for name, obj, _ in rest:
                lines += [f".. py:data:: {name}", f"   :value: {_short_repr(obj)}", ""]
            continue
        template = {"module": "autosummary/module.rst",
                    "class": "autosummary/class.rst"}.get(key, "autosummary/base.rst")
        lines += [".. autosummary::", "   :toctree: generated", f"   :template: {template}",
                  ""] + [f"   {name}" for name, _, _ in rest] + [""]
    return "\n".join(lines)


def _short_repr(obj):
    text = repr(obj)
    return text if len(text) <= 70 else text[:67] + "..."


def write_pages(srcdir):
    """Write docs/api/<module>.rst for every module of MODULES (only when changed,
    so an incremental build stays incremental)."""
    folder = os.path.join(srcdir, "api")
    os.makedirs(folder, exist_ok=True)
    for module_name in MODULES:
        path = os.path.join(folder, f"{module_name}.rst")
        text = _page(module_name)
        if not os.path.exists(path) or open(path, encoding="utf-8").read() != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
