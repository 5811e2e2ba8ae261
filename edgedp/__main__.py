"""``python -m edgedp``: the ``edgedp`` command (for a checkout that is not pip-installed)."""

from .cli import app

app(prog_name="edgedp")
