"""``python -m edgedp_runtime``: the ``edgedp-runtime`` command."""

import sys

from .cli import main

sys.exit(main(prog="python -m edgedp_runtime"))
