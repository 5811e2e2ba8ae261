"""The runtime's one error type and exit code (edgedp's CLI convention: one line, exit status 2)."""

from __future__ import annotations

EXIT_USER_ERROR = 2


class RunnerError(Exception):
    """A user-caused problem (missing file, bad sidecar, bad input shape or option, unwritable
    output).  The message is squeezed onto one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
