"""The package layout (README "Layout", CONVENTIONS.md "Layout"): subpackages re-export their public
names, the old flat module paths still import as the moved modules, and no module imports another
module's private name."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import edgedp

PACKAGE = Path(edgedp.__file__).parent
SUBPACKAGES = ("physics", "models", "fit", "io", "formats", "deploy", "run")


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


@pytest.mark.parametrize("old, new", sorted(edgedp.MOVED_MODULES.items()))
def test_old_flat_paths_import_the_moved_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    assert (PACKAGE.parent / (new.replace(".", "/") + ".py")).is_file()
    assert not (PACKAGE.parent / (old.replace(".", "/") + ".py")).exists()  # moved, not copied


def test_the_readme_api_imports_of_the_flat_layout():
    from edgedp.bundle import load_bundle, save_bundle
    from edgedp.fit import FitConfig, fit_scene
    from edgedp.io import ReadOptions, prepare_output_dir, read_dp_pair, write_npy, write_png16
    from edgedp.onnx_export import ExportConfig, export_scene

    from edgedp.deploy.onnx_export import ExportConfig as new_config
    from edgedp.fit.pipeline import fit_scene as new_fit_scene
    from edgedp.formats.bundle import save_bundle as new_save_bundle
    from edgedp.io.writers import write_png16 as new_write_png16

    assert (ExportConfig, fit_scene, save_bundle, write_png16) == (new_config, new_fit_scene, new_save_bundle, new_write_png16)
    assert all(callable(f) for f in (load_bundle, export_scene, read_dp_pair, write_npy, prepare_output_dir))
    assert FitConfig().stage2_iterations == 100 and ReadOptions().transfer == "auto"


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
