"""``python -m minires.gradflow ...``: the gradflow subcommand on its own."""
import argparse
import sys

from .command import configure_gradflow, run_gradflow

parser = argparse.ArgumentParser(prog="minires gradflow")
configure_gradflow(parser)
sys.exit(run_gradflow(parser.parse_args()))
