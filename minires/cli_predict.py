"""``minires predict``: the most probable classes of image files, by a
trained model (a checkpoint or a ``.safetensors`` export).

Every image is read with Pillow, made 32x32 the same way (torchvision's
``Resize(32)`` + ``CenterCrop(32)``, see ``minires.inference``) and
normalised as in training.  All images are read and checked before the
model runs, so a bad file among many is reported at once, by name.
"""
import json

from .cmdline import add_eval_view_arguments, device_error
from .errors import CommandError


def configure_predict(p):
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files, any size")
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint of `minires train`, or a .safetensors file of "
                        "`minires export`")
    p.add_argument("--top-k", type=int, default=3, help="classes shown per image (default 3)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_eval_view_arguments(p)


def run_predict(args):
    from .inference import load_trained, predict_proba, prepare_images, top_k
    from .data.imagefolder import _pillow
    if args.top_k < 1:
        raise CommandError(f"--top-k must be a whole number >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be a whole number >= 1, got {args.batch_size}")
    err = device_error(args.device)
    if err:
        raise CommandError(err)
    _pillow()  # a missing jpeg extra is reported before the model is loaded
    model, info = load_trained(args.checkpoint, args.device, ema=args.ema)
    x = prepare_images(args.images, info, dtype=model.parameters()[0].data.dtype)
    probs = predict_proba(model, x, args.batch_size, args.device, tta=args.tta or info["tta"])
    k = min(args.top_k, info["num_classes"])
    rows = top_k(probs, k, info["classes"])
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "model": info["architecture"],
                          "predictions": [{"image": path, "top": top}
                                          for path, top in zip(args.images, rows)]}))
    else:
        for path, top in zip(args.images, rows):
            print(f"{path}: " + ", ".join(f"{t['class']} {100 * t['probability']:.1f}%"
                                          for t in top))
    return 0
