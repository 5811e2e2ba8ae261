"""The package layout (README "Layout", CONVENTIONS.md "Layout"): subpackages re-export their public
names, every import points down the floors (:data:`FLOORS`) without a cycle, and no module imports
another module's private name."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import edgedp

PACKAGE = Path(edgedp.__file__).parent
SUBPACKAGES = ("physics", "models", "fit", "io", "formats", "deploy", "run")

#: The floor of each subpackage / top-level module (CONVENTIONS.md "Layout"): a module imports only
#: modules on its own floor or below.  ``io``, ``conventions`` and ``errors`` are below all.
FLOORS = {
    "__init__": 0, "conventions": 0, "errors": 0, "io": 0, "metrics": 0, "visualize": 0,
    "physics": 1, "models": 2, "synth": 2, "fit": 3, "formats": 4, "deploy": 5, "run": 6, "eval": 6, "cli": 7, "__main__": 8,
}


def module_name(path: Path) -> str:
    """``edgedp.fit.stage1`` for ``edgedp/fit/stage1.py`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """The edgedp modules ``path`` imports (at the top or inside functions), each resolved to a module
    file: ``from . import onnx_tools`` is ``edgedp.deploy.onnx_tools``, ``from ..fit.stage1 import x``
    is ``edgedp.fit.stage1``."""
    me = module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "edgedp":
                base = node.module
            else:
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "edgedp")
    return {name for name in found if name in MODULES and name != module_name(path)}


def floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS[parts[1] if len(parts) > 1 else "__init__"]


def test_every_module_has_a_floor():
    assert all(floor(name) >= 0 for name in MODULES)
    assert floor("edgedp.physics.operators") < floor("edgedp.fit.stage1") < floor("edgedp.formats.profile")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    up = sorted(f"{other} (floor {floor(other)})" for other in imported_modules(MODULES[module]) if floor(other) > floor(module))
    assert up == [], f"{module} (floor {floor(module)}) imports upwards"


def test_no_import_cycle():
    graph = {name: imported_modules(path) for name, path in MODULES.items()}
    # A package's __init__ only re-exports lazily (edgedp.lazy_exports), and every module imports its
    # package first: those edges are not cycles.
    graph = {name: {o for o in edges if not (MODULES[o].name == "__init__.py" and name.startswith(o + "."))}
             for name, edges in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for other in sorted(graph[node]):
            if state.get(other) == 1:
                cycles.append(stack[stack.index(other):] + [other] if other in stack else [node, other])
            elif other not in state:
                visit(other, stack + [other])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_floor_checker_sees_upward_and_function_level_imports(tmp_path):
    path = PACKAGE / "physics" / "operators.py"
    assert {"edgedp.physics.blur", "edgedp.physics.fourier", "edgedp.physics.kernels"} <= imported_modules(path)
    assert "edgedp.deploy.onnx_tools" in imported_modules(PACKAGE / "deploy" / "trt_rules.py")


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackage_reexports_resolve_to_their_modules(name):
    package = importlib.import_module(f"edgedp.{name}")
    assert package.__all__, name
    for public in package.__all__:
        value = getattr(package, public)
        assert not public.startswith("_")
        assert public in dir(package)
        defining = [m for m in package.__dir__() if (PACKAGE / name / f"{m}.py").is_file()]
        assert any(getattr(importlib.import_module(f"edgedp.{name}.{m}"), public, None) is value for m in defining), public
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        getattr(package, "no_such_name")


def test_the_readme_api_imports():
    from edgedp.deploy import ExportConfig, export_scene
    from edgedp.fit import FitConfig, fit_scene
    from edgedp.formats import load_bundle, save_bundle
    from edgedp.io import ReadOptions, prepare_output_dir, read_dp_pair, write_npy, write_png16

    from edgedp.deploy.onnx_export import ExportConfig as new_config
    from edgedp.fit.pipeline import fit_scene as new_fit_scene
    from edgedp.formats.bundle import save_bundle as new_save_bundle
    from edgedp.io.writers import write_png16 as new_write_png16

    assert (ExportConfig, fit_scene, save_bundle, write_png16) == (new_config, new_fit_scene, new_save_bundle, new_write_png16)
    assert all(callable(f) for f in (load_bundle, export_scene, read_dp_pair, write_npy, prepare_output_dir))
    assert FitConfig().stage2_iterations == 60 and ReadOptions().transfer == "auto"


@pytest.mark.parametrize("old", ["edgedp.bundle", "edgedp.latent", "edgedp.onnx_tools", "edgedp.tensorrt", "edgedp.capture"])
def test_the_flat_module_paths_of_earlier_versions_are_gone(old):
    assert old.replace("edgedp.", "") not in {p.stem for p in PACKAGE.glob("*.py")}
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def private_imports(path: Path) -> list[str]:
    """``from .x import _name`` (another module's private name) in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("edgedp")):
            found += [f"{path.relative_to(PACKAGE)}: {node.module}.{a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in private_imports(path)]
    assert found == []


def test_the_library_does_not_import_the_cli():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "cli" or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert "cli" not in (node.module or "").split("."), path
