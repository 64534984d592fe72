"""``python -m minires.gradflow ...``: the gradflow subcommand on its own."""
import argparse
import sys

from .. import heap
from ..cli import CommandError, add_threads_argument, apply_threads
from .command import configure_gradflow, run_gradflow

parser = argparse.ArgumentParser(prog="minires gradflow")
configure_gradflow(parser)
add_threads_argument(parser)
args = parser.parse_args()
try:
    apply_threads(args)
    heap.keep_freed_memory()
    sys.exit(run_gradflow(args))
except CommandError as e:
    print(f"minires gradflow: error: {e}", file=sys.stderr)
    sys.exit(2)
