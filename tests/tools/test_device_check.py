"""tools/device_check.sh: the GPU check is valid bash, refuses bad arguments in one line, and its
CPU dry run (``--device cpu``, small crop) runs every step and prints every figure."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "device_check.sh"
BASH = shutil.which("bash")


def test_script_syntax_and_bad_arguments(tmp_path):
    if BASH is None:
        pytest.skip("no bash")
    proc = subprocess.run([BASH, "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for args, needle in ((["--device", "tpu"], "--device must be cuda or cpu"), (["--crop", "big"], "--crop must be HxW"),
                         (["--data", str(tmp_path)], "not found"), (["--frobnicate"], "unknown argument")):
        proc = subprocess.run([BASH, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    help_text = subprocess.run([BASH, str(SCRIPT), "--help"], capture_output=True, text=True).stdout
    assert "--device cpu is the dry run" in help_text


@pytest.mark.slow
def test_cpu_dry_run(pixel4, tmp_path):
    if BASH is None:
        pytest.skip("no bash")
    proc = subprocess.run(
        [BASH, str(SCRIPT), "--device", "cpu", "--data", str(pixel4), "--crop", "96x128", "--preset", "fast",
         "--out", str(tmp_path / "dc")],
        capture_output=True, text=True, timeout=1800, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for needle in ("== environment", "torch 2.", "fit cpu: wall", "stage 2 defocus map", "allinfocus cpu vs cpu-ref: PSNR",
                   "defocus cpu vs cpu-ref: max |diff|", "ground truth, cpu: registered PSNR", "verify   render",
                   "verify   gd", "fp16     render", "fp16     gd", "provider: render: ", "time render: first",
                   "time predict", "== done"):
        assert needle in out, needle
    assert "FAILED" not in out
    assert (tmp_path / "dc" / "export" / "export.json").is_file()
