"""Domain rules of a fit's options in the library (edgedp.fit.options, edgedp.formats.profile,
edgedp_runtime.instant): presets, warm-start steps, the profile merge, the view-gain rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from edgedp.errors import InputError
from edgedp.fit import FitConfig
from edgedp.physics import ButterworthParams
from edgedp.fit import (
    WARM_STAGE2_ITERATIONS,
    fit_config_from_options,
    parse_channel,
    preset_config,
    presets,
    warm_iterations,
)
from edgedp.formats import DeviceProfile
from edgedp.physics import view_gain_map
from edgedp_runtime.instant import view_gain_applies


def test_fit_config_defaults_are_the_default_preset():
    assert FitConfig() == presets()["default"]
    assert fit_config_from_options() == FitConfig()
    assert FitConfig().stage2_iterations == 60 and FitConfig().stage3_iterations == 0


def test_presets_and_warm_steps():
    table = presets()
    assert {k: (c.stage2_iterations, c.stage3_iterations) for k, c in table.items()} == {
        "fast": (20, 0), "default": (60, 0), "best": (150, 60)}
    # presets differ from FitConfig() in their step counts only
    for config in table.values():
        assert dataclasses.replace(config, stage2_iterations=60, stage3_iterations=0) == FitConfig()
    assert {p: warm_iterations(p) for p in table} == WARM_STAGE2_ITERATIONS == {"fast": 3, "default": 5, "best": 10}
    with pytest.raises(InputError, match="unknown --preset 'huge'"):
        preset_config("huge")


def test_channel_parsing():
    assert parse_channel("green", 3) == 1 and parse_channel("luminance", 3) == "luminance"
    assert parse_channel("0", 1) == "luminance"
    with pytest.raises(InputError, match="one channel"):
        parse_channel("2", 1)


def _profile(**kw) -> DeviceProfile:
    base = dict(device="phone", height=37, width=53, kernel_model="disk", butterworth=ButterworthParams(order=6.0),
                radius_scale=1.25, layers=5, gd_width=0.25, gd_scale=2, gd_state={}, focus="both")
    return DeviceProfile(**(base | kw))


def test_apply_to_takes_the_device_settings_and_keeps_explicit_flags():
    p = _profile()
    c = p.apply_to(FitConfig(), (), preset="best")
    assert (c.butterworth, c.radius_scale, c.gd_width, c.gd_scale) == (ButterworthParams(order=6.0), 1.25, 0.25, 2)
    assert (c.kernel_model, c.focus, c.layers) == ("disk", "both", 5)
    assert (c.stage2_iterations, c.gd_train) == (10, "head")
    assert c.max_radius is None  # the blur range still comes from the capture
    mine = FitConfig(kernel_model="butterworth", focus="behind", layers=7, stage2_iterations=42)
    kept = p.apply_to(mine, {"kernel", "focus", "layers", "iterations"})
    assert (kept.kernel_model, kept.focus, kept.layers, kept.stage2_iterations, kept.gd_train) == (
        "butterworth", "behind", 7, 42, "all")
    warm = p.apply_to(mine, {"warm_start"})  # a G_D of the user's: a full fit, not the head only
    assert (warm.stage2_iterations, warm.gd_train) == (42, "all")


def test_fill_input():
    p = _profile(black_level=64.0, white_level=1023.0, flat_field=("w_l.png", "w_r.png"))
    assert p.fill_input(None, None, None) == {"black_level": 64.0, "white_level": 1023.0,
                                              "flat_field": (Path("w_l.png"), Path("w_r.png"))}
    mine = (Path("a.png"), Path("b.png"))
    assert p.fill_input(100.0, None, mine) == {"black_level": 100.0, "white_level": None, "flat_field": mine}


def test_view_gain_rule_is_one_definition():
    assert view_gain_applies(None, None)
    assert view_gain_applies([Path("w_l.png"), Path("w_r.png")], ("w_l.png", "w_r.png"))
    assert not view_gain_applies([Path("x.png"), Path("y.png")], ("w_l.png", "w_r.png"))
    assert not view_gain_applies(None, ("w_l.png", "w_r.png"))
    assert not view_gain_applies(("w_l.png", "w_r.png"), None)
    assert view_gain_applies(("x.png", "y.png"), ("w_l.png", "w_r.png"), from_profile=True)
    coeffs = (0.1,) + (0.0,) * 9
    p = _profile(view_gain=coeffs, flat_field=("w_l.png", "w_r.png"))
    assert p.view_gain_for(("x.png", "y.png"), 37, 53) is None
    torch.testing.assert_close(p.view_gain_for(("w_l.png", "w_r.png"), 37, 53), view_gain_map(coeffs, 37, 53))
    assert _profile().view_gain_for(None, 37, 53) is None  # no gain measured
