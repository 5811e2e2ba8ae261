"""User-facing errors.

Anything a user can cause (a missing file, a left/right size mismatch, NaNs, an 8-bit file where
16-bit is expected, an unwritable folder, refusing to overwrite) raises a subclass of
:class:`EdgedpError` with a one-line message.  The CLI prints ``error: <message>`` to stderr and
exits with status 2, without a traceback.  Programming errors stay ordinary exceptions.
"""


class EdgedpError(Exception):
    """An error caused by the user's input or environment; ``str(err)`` is one line."""


class InputError(EdgedpError):
    """Bad input data: unreadable, mismatched, wrong bit depth, NaN, too small, ..."""


class OutputError(EdgedpError):
    """An output cannot be written: the folder is not writable or the file exists."""
