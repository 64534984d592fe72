"""``minires gradflow``: gradient norms against depth of CIFAR nets, at
initialisation and after K training steps, as a table and a PNG.

Every norm is measured on one fixed probe batch (``--probe-size`` training
images balanced over the classes, not augmented) in train mode, for the batch-mean
cross-entropy without weight decay: ||dL/dx|| at each block's input (the
backward-propagated signal He et al. discuss in section 4.1), ||dL/dW|| of
each conv/linear layer, and for residual blocks ||dX_skip|| and ||dX_res||.
"""
import json
import os
import re

from ..cmdline import device_error
from ..errors import CommandError, MissingFileError
from .. import backend
from ..fileio import atomic_write, atomic_write_bytes
from ..data.subset import balanced_sample
from .recorder import GradientRecorder

# ---------------------------------------------------------------- measuring a CIFAR net
_CIFAR_NAME = re.compile(r"^(resnet|plain)(\d+)$")


def build_cifar_model(name):
    """``resnet<depth>`` or ``plain<depth>`` (depth = 6n + 2) of He et al.'s CIFAR family."""
    from ..models.cifar import _cifar_plain, _cifar_resnet
    from ..models import CIFAR_MODEL_NAMES, check_name
    match = _CIFAR_NAME.match(name)
    if match is None:
        check_name(name)  # an unknown name: the one error every command gives
        raise ValueError(f"{name!r} is not a CIFAR net; gradflow measures resnet<depth> or "
                         f"plain<depth> with depth = 6n + 2, e.g. "
                         f"{', '.join(n for n in CIFAR_MODEL_NAMES if n != 'resnet1202')}")
    builder = _cifar_resnet if match.group(1) == "resnet" else _cifar_plain
    return builder(int(match.group(2)))


def gradient_profile(model, x, y, weight_grads=False):
    """Gradient norms of one forward + backward of the mean cross-entropy on
    ``(x, y)``, in train mode (batch statistics, as in training).  The model's
    BatchNorm running statistics and its parameters' ``.grad`` are put back
    afterwards, so measuring does not disturb training.  Returns a dict:
    ``loss``, ``layers`` and ``blocks`` (as ``GradientRecorder.as_dict``),
    sorted by depth.  With ``weight_grads``, also ``weight_grads``: {layer
    name: its dL/dW as a NumPy array} for every layer in ``layers`` (what
    ``minires train --tensorboard`` draws as histograms)."""
    from ..nn.loss import CrossEntropyLoss
    grads = [(p, p.grad) for p in model.parameters()]
    buffers = [(m, k, b.copy()) for m in model.modules() for k, b in m._buffers.items()
               if b is not None]
    was_training = model.training
    crit = CrossEntropyLoss()
    try:
        for p, _ in grads:
            p.grad = None
        model.train()
        with GradientRecorder(model) as rec:
            loss = float(crit(model(x), y))
            model.backward(crit.backward())
        if weight_grads:
            # every .grad was cleared above, so each holds this probe's dL/dW alone
            modules = dict(model.named_modules())
            dw = {r.name: backend.to_numpy(modules[r.name].weight.grad) for r in rec.layers}
    finally:
        for p, g in grads:
            p.grad = g
        for m, k, saved in buffers:
            m._buffers[k][...] = saved
        model.train(was_training)
    out = rec.as_dict()
    for key in ("layers", "blocks"):
        out[key].sort(key=lambda r: (r["depth"], r["name"]))
    if weight_grads:
        out["weight_grads"] = dw
    return {"loss": loss, **out}


def train_for(model, loader, steps, lr, momentum, weight_decay):
    """``steps`` SGD steps (constant lr) over ``loader``, cycling it; the losses."""
    from ..nn.loss import CrossEntropyLoss
    from ..optim import SGD, MultiStepLR
    from ..engine import train_step
    opt = SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched, crit, losses = MultiStepLR(opt, [], 1.0), CrossEntropyLoss(), []
    while len(losses) < steps:
        for x, y in loader:
            losses.append(float(train_step(model, crit, opt, sched, x, y)[0]))
            if len(losses) == steps:
                break
    return losses


def gradflow_experiment(names, images, labels, steps=20, batch_size=64, probe_size=128,
                        lr=0.01, momentum=0.9, weight_decay=1e-4, seed=0, device="cpu",
                        log=print):
    """For each model: gradient norms on a fixed probe batch (``probe_size``
    training images, balanced over the classes, not augmented) at
    initialisation and after ``steps`` training steps (augmented batches of
    the whole split, SGD with a constant lr)."""
    import time
    from .. import random as mr_random
    from ..data import BatchLoader, normalize
    probe = balanced_sample(labels, probe_size, seed)
    x = backend.to_device(normalize(images[probe]).astype("float32"), device)
    y = backend.to_device(labels[probe].astype("int64"), device)
    results = {}
    for name in names:
        t0 = time.perf_counter()
        mr_random.manual_seed(seed)  # the same data order and augmentation for every model
        model = build_cifar_model(name).to(device)
        init = gradient_profile(model, x, y)
        loader = BatchLoader(images, labels, batch_size, shuffle=True, augment=True,
                             device=device)
        losses = train_for(model, loader, steps, lr, momentum, weight_decay)
        results[name] = {"init": init, "trained": gradient_profile(model, x, y),
                         "train_loss": losses, "seconds": time.perf_counter() - t0}
        log(f"{name}: probe loss {init['loss']:.3f} at init, "
            f"{results[name]['trained']['loss']:.3f} after {steps} steps "
            f"({results[name]['seconds']:.0f} s)")
    return results


# ---------------------------------------------------------------- reporting
def _ratio(a, b):
    return a / b if b else float("nan")


def summary_lines(name, profile, state):
    """One line of the numbers that matter for comparing with He et al."""
    blocks, layers = profile["blocks"], [r for r in profile["layers"] if not r["on_shortcut"]]
    first, last = blocks[0]["grad_input"], blocks[-1]["grad_input"]
    line = (f"{name} {state}: ||dL/dx|| at block inputs {min(b['grad_input'] for b in blocks):.3g}"
            f"..{max(b['grad_input'] for b in blocks):.3g}, first/last block {_ratio(first, last):.3g}; "
            f"||dL/dW|| {min(r['grad_weight'] for r in layers):.3g}"
            f"..{max(r['grad_weight'] for r in layers):.3g}")
    split = [_ratio(b["grad_residual"], b["grad_skip"]) for b in blocks if b["kind"] == "residual"]
    if split:
        split.sort()
        line += f"; ||dX_res||/||dX_skip|| median {split[len(split) // 2]:.3g}"
    return line


def _fmt(v):
    return "-" if v is None else f"{v:.3e}"


def format_tables(results, steps, layers=False):
    """Markdown tables: per model, each block's ||dX||, ||dX_skip||, ||dX_res||
    at init and after ``steps`` steps (and with ``layers`` each layer's ||dW||)."""
    out = []
    for name, r in results.items():
        init, trained = r["init"], r["trained"]
        out += [f"### {name}", "", f"Probe loss {init['loss']:.4f} at init, "
                f"{trained['loss']:.4f} after {steps} steps.", "",
                "| block | depth | shortcut | init ‖dX‖ | init ‖dX_skip‖ | init ‖dX_res‖ | "
                f"{steps} steps ‖dX‖ | ‖dX_skip‖ | ‖dX_res‖ |", "|" + "---|" * 9]
        for a, b in zip(init["blocks"], trained["blocks"]):
            out.append(f"| {a['name']} | {a['depth']} | {a['shortcut']} | " + " | ".join(
                _fmt(v) for v in (a["grad_input"], a["grad_skip"], a["grad_residual"],
                                  b["grad_input"], b["grad_skip"], b["grad_residual"])) + " |")
        if layers:
            out += ["", f"| layer | depth | init ‖dW‖ | {steps} steps ‖dW‖ | init ‖dL/dx‖ | "
                    f"{steps} steps ‖dL/dx‖ |", "|" + "---|" * 6]
            for a, b in zip(init["layers"], trained["layers"]):
                out.append(f"| {a['name']} | {a['depth']} | " + " | ".join(_fmt(v) for v in (
                    a["grad_weight"], b["grad_weight"], a["grad_input"], b["grad_input"])) + " |")
        out += ["", "- " + summary_lines(name, init, "at init"),
                "- " + summary_lines(name, trained, f"after {steps} steps"), ""]
    return "\n".join(out)


def plot_gradflow(results, path, steps, note=""):
    """PNG: rows = at init / after ``steps`` steps; columns = ||dL/dx|| at each
    block's input, ||dL/dW|| per weighted layer, and the residual blocks'
    skip / residual split, all against depth on a log scale."""
    from ..plot import require_matplotlib
    plt = require_matplotlib()
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), sharex=True, sharey="col")
    for row, (state, label) in enumerate((("init", "at initialisation"),
                                          ("trained", f"after {steps} steps"))):
        a, b, c = axes[row]
        for i, (name, r) in enumerate(results.items()):
            blocks = r[state]["blocks"]
            layers = [x for x in r[state]["layers"] if not x["on_shortcut"]]
            depth = [x["depth"] for x in blocks]
            a.plot(depth, [x["grad_input"] for x in blocks], "o-", ms=3, color=f"C{i}", label=name)
            b.plot([x["depth"] for x in layers], [x["grad_weight"] for x in layers], "o-", ms=3,
                   color=f"C{i}", label=name)
            if any(x["kind"] == "residual" for x in blocks):
                c.plot(depth, [x["grad_skip"] for x in blocks], "-", color=f"C{i}",
                       label=f"{name}: through the skip")
                c.plot(depth, [x["grad_residual"] for x in blocks], "--", color=f"C{i}",
                       label=f"{name}: through the residual path")
        a.set_title(f"‖dL/dx‖ at each block's input, {label}")
        b.set_title(f"‖dL/dW‖ of each conv/linear layer, {label}")
        c.set_title(f"residual blocks: ‖dX_skip‖ and ‖dX_res‖, {label}")
        for ax in (a, b, c):
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
            if row == 1:
                ax.set_xlabel("depth (weighted layer index, input side = 1)")
    fig.suptitle("Gradient norms against depth (batch-mean cross-entropy, fixed probe batch)"
                 + (f"\n{note}" if note else ""))
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- the CLI
def configure_gradflow(p):
    p.add_argument("--models", default="plain56,resnet56",
                   help="comma-separated CIFAR nets, resnet<depth> / plain<depth> (default: "
                        "plain56,resnet56)")
    p.add_argument("--data", help="CIFAR-10 folder (default: $MINIRES_DATA; without either, "
                                  "random images and labels)")
    p.add_argument("--random-data", action="store_true",
                   help="use random images and labels even if data is found")
    p.add_argument("--steps", type=int, default=20, help="training steps K (default 20)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch (default 64)")
    p.add_argument("--probe-size", type=int, default=128,
                   help="images in the fixed, class-balanced batch the gradients are measured "
                        "on (default 128)")
    p.add_argument("--lr", type=float, default=0.01,
                   help="constant SGD lr (default 0.01, He et al.'s warm-up rate: at 0.1 from "
                        "the first step ResNet-56's loss blew up and both nets fell to chance)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--out", default="gradflow.png", help="PNG path (default gradflow.png)")
    p.add_argument("--json", help="also write every number to this JSON file")
    p.add_argument("--markdown", help="also write the tables (with per-layer rows) here")


def _load_data(args, log):
    """(images, labels, note): CIFAR-10's training split, or random ones."""
    import numpy as np
    root = None if args.random_data else (args.data or os.environ.get("MINIRES_DATA"))
    if root is None:
        n = max(args.probe_size, args.batch_size) * 4
        rng = np.random.default_rng(args.seed)
        note = (f"RANDOM DATA: {n} uniform-noise images with random labels (no --data "
                f"and no $MINIRES_DATA); the norms describe the nets, not CIFAR-10")
        log(note)
        return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                rng.integers(0, 10, n).astype(np.int64), note)
    from ..data import load_cifar10
    images, labels = load_cifar10(root, split="train")[:2]
    note = f"CIFAR-10 training split ({len(labels)} images) from {root}"
    log(note)
    return images, labels, note


def run_gradflow(args, log=print):
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names:
        raise CommandError("--models: give at least one model, e.g. plain56,resnet56")
    for name in names:
        try:
            build_cifar_model(name)
        except ValueError as e:
            raise CommandError(f"--models: {e}")
    err = device_error(args.device)
    if err:
        raise CommandError(err)
    for flag in ("steps", "batch_size", "probe_size"):
        if getattr(args, flag) < (0 if flag == "steps" else 1):
            raise CommandError(f"--{flag.replace('_', '-')}: must be "
                               f"{'>= 0' if flag == 'steps' else '>= 1'}, got {getattr(args, flag)}")
    try:
        images, labels, note = _load_data(args, log)
    except MissingFileError as e:
        raise CommandError(f"--data: {e}")
    results = gradflow_experiment(names, images, labels, args.steps, args.batch_size,
                                  args.probe_size, args.lr, args.momentum, args.weight_decay,
                                  args.seed, args.device, log)
    log("")
    log(format_tables(results, args.steps))
    settings = {k: getattr(args, k) for k in ("models", "steps", "batch_size", "probe_size", "lr",
                                              "momentum", "weight_decay", "seed", "device")}
    settings["data"] = note
    if args.json:
        atomic_write_bytes(args.json, json.dumps({"settings": settings, "models": results},
                                                 indent=1).encode())
    if args.markdown:
        atomic_write_bytes(args.markdown, (
            f"# Gradient flow: {args.models}\n\nSettings: `{json.dumps(settings)}`\n\n"
            + format_tables(results, args.steps, layers=True) + "\n").encode())
    note += (f"; {args.steps} steps of SGD, lr {args.lr:g}, momentum {args.momentum:g}, "
             f"weight decay {args.weight_decay:g}, batch {args.batch_size}")
    log(f"wrote {plot_gradflow(results, args.out, args.steps, note)}")
    return 0
