"""Third-party libraries without their own log lines (standard library only).

Why: every refused input must end in edgedp's one ``error:`` line; ONNX Runtime and OpenCV print
their own ``[E:onnxruntime ...]`` / ``[ERROR:0@...] global loadsave.cpp ...`` lines to stderr
first (corrupt PNG / TIFF / PGM / ONNX files), which users read as a second, different error.  So:

* OpenCV: ``OPENCV_LOG_LEVEL=SILENT`` is set before the first ``import cv2`` (the variable is read
  when OpenCV loads) and :func:`import_cv2` also sets ``cv2.utils.logging.setLogLevel`` to silent;
* ONNX Runtime: :func:`import_onnxruntime` sets ``onnxruntime.set_default_logger_severity(4)``
  (fatal only: a failed load's errors, e.g. the "Could not write a profile because no model was
  loaded" a profiling session logs when its model did not load, are in the exception we report),
  sessions run with ``log_severity_level`` 3 (4 where profiling is on) (unless ``--verbose`` asks for ORT's INFO log), and
  :func:`ort_load` turns any load failure
  (``InvalidProtobuf``, ``Fail``, ``NoSuchFile`` ...) into one line naming the file.

A user who wants the libraries' own logs sets ``OPENCV_LOG_LEVEL`` themselves (it is not
overridden) or runs the runtime with ``--verbose``.
"""

from __future__ import annotations

import os
from typing import Any, Callable

__all__ = ["import_cv2", "import_onnxruntime", "ort_load", "silence_opencv_env"]


def silence_opencv_env() -> None:
    """``OPENCV_LOG_LEVEL=SILENT`` unless the user set a level (must run before ``import cv2``)."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")


def import_cv2() -> Any:
    """``import cv2`` with its log silenced (module docstring); ImportError when it is missing."""
    silence_opencv_env()
    import cv2  # noqa: PLC0415

    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None and os.environ.get("OPENCV_LOG_LEVEL") == "SILENT":
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    return cv2


def import_onnxruntime() -> Any:
    """``import onnxruntime`` with its default logger at FATAL only (severity 4; errors reach us as
    exceptions, module docstring); ImportError when it is missing."""
    import onnxruntime as ort  # noqa: PLC0415

    ort.set_default_logger_severity(4)
    return ort


def ort_load(ort: Any, model: Any, options: Any, providers: list, error: Callable[[str], Exception],
             what: str) -> Any:
    """``ort.InferenceSession(model, options, providers)``; a file ONNX Runtime cannot load (not a
    protobuf, an unknown op, a missing external data file) raises ``error("<what>: onnxruntime
    cannot load it: <first line of ORT's message>")``."""
    try:
        return ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as err:  # noqa: BLE001 - ORT raises its own exception types (InvalidProtobuf, Fail, ...)
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        raise error(" ".join(f"{what}: onnxruntime cannot load it: {first}".split())) from None
