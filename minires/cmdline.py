"""Command-line plumbing that every command shares: the --threads and --debug
flags, the one way a command runs (a user error becomes one line and exit
status 2; Ctrl-C and SIGTERM one line and 130 or 143) and the device check.  ``cli.py`` (``minires ...``) and
``python -m minires.gradflow`` use it; it imports none of the commands.
The error types are in ``errors.py``, the model names in ``models``.
"""
import os
import sys

from . import heap, parallel
from .errors import CommandError, UserError, one_line
from .interrupts import NAMES, Interrupted, signal_of, terminate_raises


def add_threads_argument(p):
    p.add_argument("--threads", metavar="N",
                   help=f"CPU threads to use (default: ${parallel.ENV_VAR} if set, else every "
                        f"core this process may use: {parallel.available_cores()} here)")


def add_ema_argument(p):
    """--ema/--no-ema of eval, predict and export: which weights of a checkpoint."""
    import argparse
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="use the checkpoint's EMA weights (default: them when the run kept an "
                        "average with `train --ema`, else the model's); --no-ema: the model's")


def add_eval_view_arguments(p):
    """--ema/--no-ema and --tta of eval and predict."""
    add_ema_argument(p)
    p.add_argument("--tta", choices=["none", "flip"],
                   help="test-time augmentation: flip averages the logits of each image and "
                        "its mirror (default: what the run evaluated with)")


def add_debug_argument(p):
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error (also: MINIRES_DEBUG=1)")


def debugging(args):
    return bool(getattr(args, "debug", False)) or os.environ.get("MINIRES_DEBUG", "") not in ("", "0")


def run_command(name, args, run):
    """Run a command: a UserError (a flag, a file, a missing extra) becomes one
    line on stderr and exit status 2; --debug re-raises it with its traceback.
    Any other exception is a bug and keeps its traceback."""
    try:
        with terminate_raises():  # SIGTERM: one line and status 143, like Ctrl-C's 130
            apply_threads(args)
            heap.keep_freed_memory()  # steps reuse their pages (minires/heap.py)
            return run(args)
    except UserError as e:
        if debugging(args):
            raise
        print(f"minires {name}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as e:
        if debugging(args):
            raise
        signum = signal_of(e)
        if not getattr(e, "quiet", False):  # (MPI: rank 0 speaks for all)
            message = str(e) if isinstance(e, Interrupted) else NAMES[signum]
            print(f"minires {name}: {one_line(message)}", file=sys.stderr, flush=True)
        return 128 + signum


def apply_threads(args):
    """--threads N (or $MINIRES_NUM_THREADS) -> minires.set_num_threads, checked
    before any data is loaded; a bad value is a CommandError."""
    try:
        if getattr(args, "threads", None) is not None:
            parallel.set_num_threads(args.threads)
        else:
            parallel.get_num_threads()  # reads and checks the environment variable
    except ValueError as e:
        raise CommandError(str(e).replace("minires.set_num_threads", "--threads"))


def device_error(device):
    """A clear message when --device cuda cannot work here, else None."""
    from . import backend
    if device != "cuda" or backend.gpu_available():
        return None
    if backend.cupy_or_none() is None:
        return ("--device cuda needs CuPy: pip install 'minires[gpu]' (cupy-cuda12x; for other "
                "CUDA versions see docs/train.md, Install)")
    return "--device cuda: CuPy is installed but sees no CUDA GPU (check nvidia-smi)"
