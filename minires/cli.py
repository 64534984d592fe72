"""The ``minires`` command line (also ``python -m minires``).

Each subcommand is a pair of functions registered in ``SUBCOMMANDS``:
``add_<name>_arguments(parser)`` declares its options and ``run_<name>(args)``
does the work and returns the exit status.  Adding ``train``, ``eval``,
``plot`` or ``gradflow`` means writing that pair and one dict entry.

    minires summary resnet18                 # 3x224x224
    minires summary resnet20                 # 3x32x32 (a CIFAR model)
    minires summary resnet50 --input-size 3,160,160 --num-classes 100
"""
import argparse
import sys

import minires  # for minires.__version__, the one place the version lives
from . import cli_export, cli_predict, cli_train, gradflow
from .cmdline import add_debug_argument, add_threads_argument, run_command
from .errors import CommandError
from .models import CIFAR_MODEL_NAMES, MODEL_NAMES


def default_input_size(model_name):
    """3x32x32 for the CIFAR nets, 3x224x224 for the ImageNet ones."""
    return (3, 32, 32) if model_name in CIFAR_MODEL_NAMES else (3, 224, 224)


def build_model(name, num_classes=None):
    """``minires.models.<name>(num_classes=...)``, with a clear error for a typo."""
    from . import models
    return models.get(name) if num_classes is None else models.get(name, num_classes=num_classes)


def parse_input_size(values):
    """``['3', '32', '32']`` or ``['3,32,32']`` (or ``3x32x32``) -> (3, 32, 32)."""
    text = " ".join(values).replace(",", " ").replace("x", " ")
    try:
        size = tuple(int(v) for v in text.split())
    except ValueError:
        raise CommandError(f"--input-size: expected integers C H W, got {' '.join(values)!r}")
    if len(size) != 3 or min(size) < 1:
        raise CommandError(f"--input-size: expected three positive integers C H W "
                           f"(e.g. 3 32 32 or 3,32,32), got {' '.join(values)!r}")
    return size


# ---------------------------------------------------------------- summary
def add_summary_arguments(p):
    p.add_argument("model", help="model name: " + ", ".join(MODEL_NAMES))
    p.add_argument("--input-size", nargs="+", metavar="C H W",
                   help="input size without the batch, as '3 32 32' or '3,32,32' "
                        "(default 3x32x32 for CIFAR models, 3x224x224 otherwise)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="size of the classifier head (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the dummy input")


def run_summary(args):
    from .summary import summary
    size = (parse_input_size(args.input_size) if args.input_size
            else default_input_size(args.model))
    model = build_model(args.model, args.num_classes)
    result = summary(model, size, batch_size=args.batch_size, verbose=False)
    print(result)
    return 0


# ---------------------------------------------------------------- info
def add_info_arguments(p):
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run_info(args):
    import json
    from . import sysinfo
    report = sysinfo.report()
    print(json.dumps(report, indent=2) if args.json else sysinfo.format_report(report))
    return 0


# name -> (help, add_arguments, run)
SUBCOMMANDS = {
    "train": ("train a model on CIFAR-10 (progress, checkpoints, resume)",
              cli_train.configure_train, cli_train.run_train),
    "eval": ("accuracy and loss of a checkpoint on a CIFAR-10 split",
             cli_train.configure_eval, cli_train.run_eval),
    "plot": ("PNG of loss, accuracy and learning rate per epoch of a run",
             cli_train.configure_plot, cli_train.run_plot),
    "gradflow": ("gradient norms against depth of CIFAR nets, at init and after K steps (table + PNG)",
                 gradflow.configure_gradflow, gradflow.run_gradflow),
    "summary": ("per-layer output shapes, parameters and MACs of a model",
                add_summary_arguments, run_summary),
    "export": ("write a checkpoint's weights as .safetensors (torch's key names + metadata)",
               cli_export.configure_export, cli_export.run_export),
    "predict": ("top classes and probabilities of image files by a trained model",
                cli_predict.configure_predict, cli_predict.run_predict),
    "info": ("what decides speed here: numpy's BLAS and its kernel, threads, cores, GPU, MPI",
             add_info_arguments, run_info),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minires", description="ResNets from scratch in NumPy/CuPy, backward by hand.")
    parser.add_argument("--version", action="version", version=f"minires {minires.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (help_text, add_arguments, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        add_threads_argument(p)
        add_debug_argument(p)
        p.set_defaults(run=run)
    return parser


def main(argv=None):
    """Entry point of the ``minires`` script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(args.command, args, args.run)


if __name__ == "__main__":
    sys.exit(main())
