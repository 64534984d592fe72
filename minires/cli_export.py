"""``minires export``: a checkpoint's weights as a ``.safetensors`` file.

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


def configure_export(p):
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `minires train`")
    p.add_argument("--out", help="the .safetensors file to write (default: the checkpoint's "
                                 "path with .safetensors for its extension)")
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
    out = args.out or os.path.splitext(args.checkpoint)[0] + ".safetensors"
    if not out.lower().endswith(".safetensors"):
        # load_pretrained and predict pick the format by the extension
        raise CommandError(f"--out must end in .safetensors, got {out!r}")
    if os.path.abspath(out) == os.path.abspath(args.checkpoint):
        raise CommandError(f"--out {out} is the checkpoint itself; choose another name")
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
