"""The ``edgedp`` command (Typer): one thin file per command, each parsing its options, calling one
library function and printing.

``app`` (the Typer app, ``edgedp.cli.app``) is the console script of ``pyproject.toml`` and what
``python -m edgedp`` runs.  Shared pieces: ``options`` (option declarations), ``output`` (progress and
printed lines).  Importing a command module registers its command; the order below is the order of
``edgedp --help``.
"""

from . import info, synth, fit, tune, batch, export, verify  # noqa: F401  (registers the commands)
from .app import app

__all__ = ["app"]
