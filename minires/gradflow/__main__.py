"""``python -m minires.gradflow ...``: the gradflow subcommand on its own,
with the same error handling as ``minires gradflow``."""
import argparse
import sys

from ..cmdline import add_debug_argument, add_threads_argument, run_command
from .command import configure_gradflow, run_gradflow

parser = argparse.ArgumentParser(prog="minires gradflow")
configure_gradflow(parser)
add_threads_argument(parser)
add_debug_argument(parser)
sys.exit(run_command("gradflow", parser.parse_args(), run_gradflow))
