"""``python -m minires ...`` runs the command line (see minires/cli.py)."""
import sys

from .cli import main

sys.exit(main())
