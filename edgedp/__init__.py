"""edgedp: zero-shot dual-pixel defocus deblurring for edge devices.

The package reads as the method (README "Layout"): ``physics`` (DP kernels, blur, the forward model as
operators, disparity), ``models`` (G_D), ``fit`` (options and presets, stages 1-3, the final
deconvolution, tiling, the whole fit, ``tune``), ``io`` (images, transfers, cameras, on-disk arrays),
``formats`` (the scene bundle, the device profile), ``deploy`` (the exporter and its ONNX / TensorRT
parts), ``run`` (one capture, a batch) and ``cli`` (one thin file per command).  Each subpackage
re-exports its public names (``from edgedp.fit import FitConfig, fit_scene``).

The flat module paths of earlier versions (``edgedp.bundle``, ``edgedp.onnx_export``, ``edgedp.latent``,
...) still import: each is the moved module itself (``MOVED_MODULES``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Callable

__version__ = "0.1.0"

# Before any module imports OpenCV: no "[ERROR:0@...]" lines of its own before edgedp's one
# error line on a corrupt file (edgedp_runtime.quiet; a level the user set is kept).
import os as _os

_os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")

# Flat module paths before the subpackages -> where each module lives now.
MOVED_MODULES = {
    "edgedp.kernels": "edgedp.physics.kernels",
    "edgedp.operators": "edgedp.physics.operators",
    "edgedp.disparity": "edgedp.physics.disparity",
    "edgedp.networks": "edgedp.models.defocus_net",
    "edgedp.options": "edgedp.fit.options",
    "edgedp.latent": "edgedp.fit.stage1",
    "edgedp.kernel_fit": "edgedp.fit.stage3",
    "edgedp.deconvolution": "edgedp.fit.deconvolution",
    "edgedp.tiling": "edgedp.fit.tiling",
    "edgedp.tune": "edgedp.fit.tune",
    "edgedp.transfer": "edgedp.io.transfer",
    "edgedp.cameras": "edgedp.io.cameras",
    "edgedp.diskarray": "edgedp.io.diskarray",
    "edgedp.bundle": "edgedp.formats.bundle",
    "edgedp.profile": "edgedp.formats.profile",
    "edgedp.exporter": "edgedp.deploy.exporter",
    "edgedp.onnx_export": "edgedp.deploy.onnx_export",
    "edgedp.onnx_gd": "edgedp.deploy.onnx_gd",
    "edgedp.onnx_tools": "edgedp.deploy.onnx_tools",
    "edgedp.tensorrt": "edgedp.deploy.tensorrt",
    "edgedp.profile_export": "edgedp.deploy.profile_export",
    "edgedp.capture": "edgedp.run.capture",
    "edgedp.batch": "edgedp.run.batch",
}
# (edgedp.physics, edgedp.fit, edgedp.io and edgedp.cli are now the subpackages of those names; each
# re-exports what the flat module held.)


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old flat path (``MOVED_MODULES``) as the module that lives at the new one."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module):
        pass  # the moved module ran when it was imported under its own name


if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, MovedModuleFinder())  # before any installed copy's finder


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
