"""edgedp: zero-shot dual-pixel defocus deblurring for edge devices.

The package reads as the method (README "Layout"): ``physics`` (DP kernels, blur, the forward model as
operators, disparity), ``models`` (G_D), ``fit`` (options and presets, stages 1-3, the final
deconvolution, tiling, the whole fit, ``tune``), ``io`` (images, transfers, cameras, on-disk arrays),
``formats`` (the scene bundle, the device profile), ``deploy`` (the exporter and its ONNX / TensorRT
parts), ``run`` (one capture, a batch, a device profile), ``eval`` (the Pixel 4 protocol and timed runs, for the
benchmarks) and ``cli`` (one thin file per command).  Each subpackage
re-exports its public names (``from edgedp.fit import FitConfig, fit_scene``).
"""

from __future__ import annotations

import importlib
from typing import Callable

__version__ = "0.1.0"

# Before any module imports OpenCV: no "[ERROR:0@...]" lines of its own before edgedp's one
# error line on a corrupt file (edgedp_runtime.quiet; a level the user set is kept).
import os as _os

_os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")

def lazy_exports(package: str, table: dict[str, tuple[str, ...]]) -> tuple[Callable, Callable, list[str]]:
    """A subpackage's re-exports, imported on first use: ``(__getattr__, __dir__, __all__)``.

    ``table`` maps each submodule to the public names it defines.  Lazy, so that importing one
    submodule (``edgedp.fit.options`` from the CLI) does not import its siblings (PyTorch, and no
    import cycle through a package's ``__init__``).

    >>> import edgedp.physics
    >>> edgedp.physics.fast_size is importlib.import_module("edgedp.physics.blur").fast_size
    True
    """
    home = {name: module for module, names in table.items() for name in names}

    def __getattr__(name: str):
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{home[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(set(home) | set(table))

    return __getattr__, __dir__, sorted(home)
