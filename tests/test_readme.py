"""The README's Python API example runs as written (on a small synthetic pair)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgedp.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def api_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section holds one python block"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    made = CliRunner().invoke(app, ["synth", "-o", "out/sample", "--size", "64x80", "--max-radius", "4", "--seed", "1"])
    assert made.exit_code == 0, made.output
    code = api_block()
    assert code.count("EXPORT API") == 1  # the export step is one marked line
    exec(compile(code, str(README) + ":python-api", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "(64, 80) linear []"
    assert printed[-1] == "['gd', 'refocus', 'render'] {'render': True, 'refocus': True, 'gd': True}"
    out = tmp_path / "out" / "api"
    for name in ("allinfocus.png", "defocus.npy", "scene/scene.npz", "scene/scene.json", "onnx/render.onnx", "onnx/export.json"):
        assert (out / name).is_file(), name
    assert np.load(out / "defocus.npy").shape == (64, 80)
