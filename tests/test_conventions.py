"""The focus-side vocabulary (edgedp.conventions): each public value and its sign of blur radius,
old names still read, and every producer speaking it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgedp import conventions as cv
from edgedp.cli import app
from edgedp.physics import decide_side
from edgedp.fit import FitConfig, layer_radii
from edgedp.synth import SynthConfig


def test_each_public_value_has_its_sign_of_radius():
    assert {name: cv.radius_signs(name) for name in cv.SIDES + cv.FIT_FOCI} == {
        "behind": (1,),
        "in_front": (-1,),
        "both": (-1, 1),
        "in_focus": (0,),
        "unknown": (),
        "auto": (),
    }
    with pytest.raises(ValueError, match="unknown focus side 'front'"):
        cv.radius_signs("front")  # an old name is no public value


@pytest.mark.parametrize("focus", [cv.BEHIND, cv.BOTH])
def test_fit_focus_layers_have_its_signs(focus):
    _, radii = layer_radii(FitConfig(focus=focus, max_radius=4.0), 0.0, 0.0, cv.UNKNOWN)
    signs = {int(s) for s in torch.sign(radii).tolist()} - {0}
    assert tuple(sorted(signs)) == cv.radius_signs(focus)


@pytest.mark.parametrize(
    "disparities, side",
    [([2.0] * 20, "behind"), ([-2.0] * 20, "in_front"), ([2.0] * 10 + [-2.0] * 10, "both"), ([0.0] * 20, "in_focus"),
     ([], "unknown")],
)
def test_decide_side_speaks_the_vocabulary_with_the_disparity_sign(disparities, side):
    got = decide_side(np.array(disparities))
    assert got == side
    signs = cv.radius_signs(got)
    assert all(np.sign(d) in signs for d in disparities)  # disparity has the sign of r


def test_auto_focus_of_each_side():
    assert {s: cv.focus_for_side(s) for s in cv.SIDES} == {
        "behind": "behind", "in_front": "both", "both": "both", "in_focus": "behind", "unknown": "behind"}
    assert cv.focus_for_side("front") == "both"  # an old side "front" was r < 0


def test_old_names_are_read():
    assert FitConfig(focus="front").focus == "behind"
    assert FitConfig(focus="front") == FitConfig(focus="behind")
    assert SynthConfig(focus="front").focus == "behind"
    assert cv.side_name("in-focus") == "in_focus" and cv.side_name("front") == "in_front"
    with pytest.raises(ValueError, match="focus 'sideways'"):
        FitConfig(focus="sideways")
    with pytest.raises(ValueError, match="behind"):
        SynthConfig(focus="auto")


def test_old_cli_value_gives_one_warning_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["synth", "-o", str(tmp_path / "s"), "--size", "37x53", "--focus", "front"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: --focus front is the old name of behind (blur behind the focal plane, r > 0); "
                        "use --focus behind"]
    assert "Traceback" not in result.output
    params = json.loads((tmp_path / "s" / "scene.json").read_text())
    assert params["config"]["focus"] == "behind"
    quiet = runner.invoke(app, ["synth", "-o", str(tmp_path / "t"), "--size", "37x53", "--focus", "behind"])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr
