"""The ``edgedp`` command line (Typer).

Every command turns user errors (:class:`edgedp.errors.EdgedpError`) into one line on stderr,
``error: ...``, and exit status 2, without a traceback.
"""

from __future__ import annotations

import functools
from typing import Annotated, Callable, TypeVar

import typer

from .. import __version__
from ..errors import EdgedpError


app = typer.Typer(
    name="edgedp",
    help="Zero-shot dual-pixel defocus deblurring: fit a DP pair, export to ONNX / TensorRT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
F = TypeVar("F", bound=Callable)


def user_errors(fn: F) -> F:
    """Run a command; an EdgedpError becomes ``error: <message>`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgedpError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgedp {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """edgedp: zero-shot dual-pixel defocus deblurring for edge devices."""
