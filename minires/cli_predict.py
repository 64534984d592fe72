"""``minires predict``: the most probable classes of images, by a trained model
(a checkpoint or a ``.safetensors`` export).

The images are files, folders (every image in them, recursively) and glob
patterns, in the order given (a folder's and a pattern's files sorted).
Every image is read with Pillow, made 32x32 the same way (torchvision's
``Resize(32)`` + ``CenterCrop(32)``, see ``minires.inference``) and
normalised as in training, a batch at a time, so a folder of any size fits
in memory.  An image that cannot be read is named on stderr and skipped,
with a count at the end; ``--strict`` stops at it instead (one line, exit
status 2).  A path that does not exist, a folder without images and a
pattern that matches nothing are errors before any image is read.
"""
import csv
import glob
import io
import json
import os
import sys
import time

from .cmdline import add_eval_view_arguments, device_error
from .errors import CommandError, MissingFileError, UserError, one_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
OUTPUT_FORMATS = (".csv", ".jsonl")


def configure_predict(p):
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (PNG, JPEG, ... any size), folders (every image in them, "
                        "recursively) or glob patterns ('photos/*.jpg', quoted)")
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint of `minires train`, or a .safetensors file of "
                        "`minires export`")
    p.add_argument("--top-k", type=int, default=3, help="classes shown per image (default 3)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", metavar="FILE",
                   help="write the predictions to FILE instead: .csv (image, then class and "
                        "probability for each of the top k) or .jsonl (one JSON line per image)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first image that cannot be read (default: skip it, "
                        "named, and count it at the end)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on long lists")
    add_eval_view_arguments(p)


def expand_images(args):
    """The image files named by files, folders and glob patterns, in order."""
    files = []
    for arg in args:
        if os.path.isdir(arg):
            found = sorted(os.path.join(folder, name) for folder, _, names in os.walk(arg)
                           for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise CommandError(f"{arg}: no image files in this folder (looked for "
                                   f"{', '.join(IMAGE_EXTENSIONS)}, in its subfolders too)")
            files += found
        elif os.path.exists(arg):
            files.append(arg)
        elif glob.has_magic(arg):
            found = sorted(f for f in glob.glob(arg, recursive=True) if os.path.isfile(f))
            if not found:
                raise CommandError(f"{arg}: no file matches this pattern")
            files += found
        else:
            raise MissingFileError(f"image not found: {arg}")
    return files


class _Writer:
    """Where the predictions go: stdout as text or one JSON object, or a CSV or
    JSON-lines file (written through the atomic-write helper)."""

    def __init__(self, args, k):
        self.args, self.k, self.rows, self.file = args, k, [], None
        if args.out:
            from .fileio import atomic_write
            self._context = atomic_write(args.out)
            self.file = self._context.__enter__()
            if args.out.lower().endswith(".csv"):
                header = ["image"] + [f"{what}_{r}" for r in range(1, k + 1)
                                      for what in ("class", "probability")]
                self._line(",".join(header))

    def _line(self, text):
        self.file.write((text + "\n").encode())

    def add(self, path, top):
        if self.file is None:
            if self.args.json:
                self.rows.append({"image": path, "top": top})
            else:
                print(f"{path}: " + ", ".join(f"{t['class']} {100 * t['probability']:.1f}%"
                                              for t in top))
        elif self.args.out.lower().endswith(".csv"):
            buf = io.StringIO()
            csv.writer(buf, lineterminator="").writerow(
                [path] + [v for t in top for v in (t["class"], f"{t['probability']:.6g}")])
            self._line(buf.getvalue())
        else:
            self._line(json.dumps({"image": path, "top": top}))

    def close(self, info, skipped, error=None):
        """Finish the output; with ``error`` (the exception stopping the run) a
        file being written is dropped and the previous one, if any, kept."""
        if self.file is not None:
            self._context.__exit__(type(error) if error else None, error, None)
        elif self.args.json and error is None:
            print(json.dumps({"checkpoint": self.args.checkpoint, "model": info["architecture"],
                              "predictions": self.rows, "skipped": skipped}))


def run_predict(args):
    from .fold import fold_batchnorm
    from .inference import load_trained, predict_proba, read_image, top_k
    from .data import normalize
    from .data.imagefolder import _pillow
    import numpy as np
    if args.top_k < 1:
        raise CommandError(f"--top-k must be a whole number >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be a whole number >= 1, got {args.batch_size}")
    if args.out and not args.out.lower().endswith(OUTPUT_FORMATS):
        raise CommandError(f"--out must end in .csv or .jsonl, got {args.out!r}")
    if args.out and args.json:
        raise CommandError("--json prints to the terminal; with --out the file's extension "
                           "says the format: give one of them")
    err = device_error(args.device)
    if err:
        raise CommandError(err)
    _pillow()  # a missing jpeg extra is reported before the model is loaded
    model, info = load_trained(args.checkpoint, args.device, ema=args.ema)
    paths = expand_images(args.images)
    model, _ = fold_batchnorm(model)  # batch norm folded into the convolutions (minires.fold)
    dtype = model.parameters()[0].data.dtype
    k = min(args.top_k, info["num_classes"])
    writer, skipped, done = _Writer(args, k), [], 0
    from tqdm import tqdm
    bar = tqdm(total=len(paths), unit="img", file=sys.stderr, leave=False, mininterval=1.0,
               disable=args.no_progress or len(paths) <= args.batch_size)
    t0 = time.perf_counter()
    try:
        for start in range(0, len(paths), args.batch_size):
            good, pixels = [], []
            for path in paths[start:start + args.batch_size]:
                try:
                    pixels.append(read_image(path))
                    good.append(path)
                except UserError as e:
                    if args.strict:
                        raise
                    skipped.append(path)
                    bar.clear()
                    print(f"minires predict: skipped {one_line(e)}", file=sys.stderr)
            if good:
                x = normalize(np.stack(pixels), mean=info["mean"], std=info["std"], dtype=dtype)
                probs = predict_proba(model, x, args.batch_size, args.device,
                                      tta=args.tta or info["tta"])
                for path, top in zip(good, top_k(probs, k, info["classes"])):
                    writer.add(path, top)
                done += len(good)
            bar.update(len(paths[start:start + args.batch_size]))
    except BaseException as e:
        bar.close()
        writer.close(info, skipped, e)
        raise
    bar.close()
    writer.close(info, skipped)
    seconds = time.perf_counter() - t0
    where = f"; wrote {args.out}" if args.out else ""
    print(f"minires predict: {done} image{'s' * (done != 1)} in {seconds:.2f} s "
          f"({done / max(seconds, 1e-9):.0f} images/s){where}"
          + (f"; skipped {len(skipped)} that could not be read" if skipped else ""),
          file=sys.stderr)
    if not done:
        raise CommandError(f"none of the {len(paths)} images could be read")
    return 0
