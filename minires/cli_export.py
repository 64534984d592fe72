"""``minires export``: a checkpoint's weights as a ``.safetensors`` file, or
the whole model as an ONNX graph (``--format onnx``, ``minires.onnx_export``).

The file holds the model's state_dict under torch's key names (so
``safetensors.torch.load_file`` gives what the torch model's
``load_state_dict`` takes) and, as metadata, what is needed to use it
without the run folder: the architecture, the number of classes and their
names, the normalisation mean and std, and the minires version.
``minires.convert.load_pretrained``, ``minires train --init-from`` and
``minires predict --checkpoint`` read it back.
"""
import os

from .cmdline import add_ema_argument
from .errors import CommandError


FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx"}


def configure_export(p):
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `minires train`")
    p.add_argument("--format", choices=sorted(FORMATS),
                   help="safetensors: the weights, torch's names (default); onnx: the whole "
                        "model as a graph for ONNX Runtime (needs the onnx extra)")
    p.add_argument("--out", help="the file to write (default: the checkpoint's path with "
                                 ".safetensors or .onnx for its extension)")
    p.add_argument("--fold", action="store_true",
                   help="onnx: fold each batch norm into the convolution before it")
    add_ema_argument(p)


def export_metadata(info):
    """The safetensors metadata (strings only: lists as JSON) for a model
    described by ``minires.inference.checkpoint_info``."""
    import minires  # for minires.__version__
    return {"format": "pt",  # torch's layout and names (what HF loaders look for)
            "architecture": info["architecture"], "num_classes": str(info["num_classes"]),
            "classes": info["classes"], "mean": info["mean"], "std": info["std"],
            "weights": info.get("weights", "live"), "tta": info.get("tta", "none"),
            "minires_version": minires.__version__}


def run_export(args):
    from .checkpoint import load_checkpoint
    from .convert import _safetensors_numpy, save_safetensors
    from .inference import checkpoint_info, checkpoint_weights
    fmt = args.format or ("onnx" if (args.out or "").lower().endswith(".onnx") else "safetensors")
    out = args.out or os.path.splitext(args.checkpoint)[0] + FORMATS[fmt]
    if not out.lower().endswith(FORMATS[fmt]):
        # load_pretrained and predict pick the format by the extension
        raise CommandError(f"--out must end in {FORMATS[fmt]} for --format {fmt}, got {out!r}")
    if os.path.abspath(out) == os.path.abspath(args.checkpoint):
        raise CommandError(f"--out {out} is the checkpoint itself; choose another name")
    if args.fold and fmt != "onnx":
        raise CommandError("--fold goes with --format onnx (safetensors keeps the weights as "
                           "trained)")
    if fmt == "onnx":
        return _export_onnx(args, out)
    _safetensors_numpy()  # a missing extra is reported before the checkpoint is read
    state = load_checkpoint(args.checkpoint)
    info = checkpoint_info(state)
    sd, info["weights"] = checkpoint_weights(state, args.checkpoint, args.ema)
    save_safetensors(sd, out, metadata=export_metadata(info))
    n_params = sum(int(v.size) for k, v in sd.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    which = " (the EMA's weights)" if info["weights"] == "ema" else ""
    print(f"wrote {out}: {info['architecture']}{which}, {len(sd)} tensors, {n_params:,} parameters, "
          f"{os.path.getsize(out) / 1e6:.2f} MB")
    return 0


def _export_onnx(args, out):
    import json
    from .inference import load_trained
    from .onnx_export import export_onnx, import_onnx
    import_onnx()  # a missing extra is reported before the checkpoint is read
    model, info = load_trained(args.checkpoint, ema=args.ema)
    meta = {k: v if isinstance(v, str) else json.dumps(v)
            for k, v in export_metadata(info).items() if k != "format"}
    meta["input"] = ("float32 N x 3 x 32 x 32, RGB scaled to [0, 1], then minus mean and "
                     "divided by std (per channel, the metadata's mean and std)")
    meta["output"] = "logits: N x num_classes, in the order of the metadata's classes"
    meta["batch_norm"] = "folded into the convolutions" if args.fold else "as trained"
    export_onnx(model, out, input_size=(3, 32, 32), fold=args.fold, metadata=meta)
    which = " (the EMA's weights)" if info["weights"] == "ema" else ""
    folded = ", batch norm folded" if args.fold else ""
    print(f"wrote {out}: {info['architecture']}{which} as ONNX (opset 17{folded}), "
          f"{os.path.getsize(out) / 1e6:.2f} MB")
    return 0
