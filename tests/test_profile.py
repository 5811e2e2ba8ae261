"""Tests for edgedp.formats.profile (device profile file).  STATUS: complete for the module's API."""

import json
from dataclasses import replace as dataclasses_replace

import numpy as np
import pytest
import torch

from edgedp.errors import InputError, OutputError
from edgedp.physics import ButterworthParams
from edgedp.models import DefocusNet
from edgedp.formats.profile import (
    FORMAT_VERSION,
    CaptureInfo,
    DeviceProfile,
    check_compatible,
    load_profile,
    save_profile,
)


def _profile(layers=5):
    net = DefocusNet(layers, 0.25)
    return DeviceProfile(
        device="sim-phone",
        height=37,
        width=53,
        kernel_model="butterworth",
        butterworth=ButterworthParams(order=9, cutoff=2.0, beta=0.5),
        radius_scale=1.25,
        layers=layers,
        gd_width=0.25,
        gd_scale=2,
        gd_state={k: v.detach().clone() for k, v in net.state_dict().items()},
        focus="front",
        radii=tuple(float(r) for r in range(layers)),
        black_level=0.0625,
        white_level=1.0,
        flat_field=("a.npy", "b.npy"),
        captures=(CaptureInfo("x_left.png", 37, 53, 0.1, 3.5, 1.5, 0.25),),
        view_gain=(0.05, 0.01, -0.02, 0.0, 0.15, 0.0, 0.01, -0.03, 0.0, 0.02),
        asymmetry=1.05,
    )


def test_round_trip(tmp_path):
    p = _profile()
    path = save_profile(p, tmp_path / "PHONE.profile")
    q = load_profile(path)
    assert set(q.gd_state) == set(p.gd_state)
    for k in p.gd_state:
        assert q.gd_state[k].dtype == p.gd_state[k].dtype
        assert torch.equal(q.gd_state[k], p.gd_state[k])
    for f in ("device", "height", "width", "kernel_model", "butterworth", "radius_scale", "layers",
              "gd_width", "gd_scale", "focus", "radii", "black_level", "white_level", "flat_field", "captures",
              "view_gain", "asymmetry"):
        assert getattr(q, f) == getattr(p, f), f
    assert q.created.endswith("+00:00")
    # identical outputs from the loaded G_D
    a, b = DefocusNet(5, 0.25), DefocusNet(5, 0.25)
    a.load_state_dict(p.gd_state)
    b.load_state_dict(q.gd_state)
    x = torch.rand(1, 2, 32, 48)
    assert torch.equal(a(x), b(x))
    # readable with numpy alone
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].item())
    assert meta["format"] == "edgedp-profile" and meta["kernel"]["butterworth"]["order"] == 9


def test_no_overwrite(tmp_path):
    path = save_profile(_profile(), tmp_path / "p.profile")
    with pytest.raises(OutputError, match="exists"):
        save_profile(_profile(), path)
    save_profile(_profile(), path, overwrite=True)


def _one_line(err):
    msg = str(err.value)
    assert "\n" not in msg and "profile" in msg
    return msg


def test_corrupt_file(tmp_path):
    path = tmp_path / "bad.profile"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(InputError) as err:
        load_profile(path)
    _one_line(err)
    with pytest.raises(InputError, match="no such file"):
        load_profile(tmp_path / "missing.profile")


def test_truncated_file(tmp_path):
    path = save_profile(_profile(), tmp_path / "p.profile")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        load_profile(path)
    _one_line(err)


def _rewrite(path, **changes):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def test_wrong_version_and_format(tmp_path):
    path = save_profile(_profile(), tmp_path / "p.profile")
    _rewrite(path, format_version=np.array(FORMAT_VERSION + 1, dtype=np.int32))
    with pytest.raises(InputError, match="format_version 2 is not supported") as err:
        load_profile(path)
    _one_line(err)
    _rewrite(path, format=np.array("edgedp-scene"))
    with pytest.raises(InputError, match="format is 'edgedp-scene'"):
        load_profile(path)


def test_bad_metadata(tmp_path):
    path = save_profile(_profile(), tmp_path / "p.profile")
    _rewrite(path, meta=np.array(json.dumps({"device": "x"})))
    with pytest.raises(InputError, match="metadata") as err:
        load_profile(path)
    _one_line(err)


def test_mismatch():
    p = _profile(layers=5)
    check_compatible(p, height=37, width=53, layers=5)
    with pytest.raises(InputError, match="tuned on 37x53 captures, this capture is 38x53"):
        check_compatible(p, height=38, width=53)
    with pytest.raises(InputError, match="5-layer G_D, this fit uses 7 layers"):
        check_compatible(p, height=37, width=53, layers=7)


# ---- `edgedp fit --profile` (CLI plumbing; the fit itself runs for 2 iterations) ----

def _pair(folder, size=(37, 53)):
    import cv2

    g = np.random.default_rng(0)
    for name in ("left", "right"):
        cv2.imwrite(str(folder / f"{name}.png"), (g.random(size) * 50000 + 5000).astype(np.uint16))
    return folder / "left.png", folder / "right.png"


def test_fit_with_profile(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import edgedp.fit.pipeline
    from edgedp.cli import app

    real = edgedp.fit.pipeline.fit_scene
    calls = []

    def recorder(left, right, config, *, kernel_field=None, field_prior=None, gd_init=None, progress=None):
        calls.append((config, gd_init, left.clone(), right.clone()))
        return real(left, right, config, gd_init=gd_init, progress=progress)

    from edgedp.fit import warm_iterations
    from edgedp.io import ReadOptions, read_dp_pair
    from edgedp.formats import view_gain_map

    monkeypatch.setattr(edgedp.fit.pipeline, "fit_scene", recorder)
    gain = (0.1, 0.0, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0)
    prof = dataclasses_replace(_profile(), black_level=None, white_level=None, flat_field=None, view_gain=gain)
    path = save_profile(prof, tmp_path / "PHONE.profile")
    left, right = _pair(tmp_path)
    res = CliRunner().invoke(app, ["fit", str(left), str(right), "-o", str(tmp_path / "out"), "--profile", str(path), "--iterations", "2,0"])
    assert res.exit_code == 0, res.output
    config, gd_init, fit_left, fit_right = calls[0]
    # kernel shape, radius per disparity and layer count from the profile; the blur range from
    # this capture's disparity (None: derived in fit_scene)
    assert config.butterworth == prof.butterworth and config.layers == 5 and config.max_radius is None
    assert config.radius_scale == 1.25 and config.gd_width == 0.25 and config.focus == "behind"
    assert config.stage2_iterations == 2 and config.gd_train == "all"  # --iterations: a full fit
    assert set(gd_init) == set(prof.gd_state) and all(torch.equal(gd_init[k], prof.gd_state[k]) for k in gd_init)
    # the profile's left/right gain corrects the right view (no flat field here or in the profile)
    plain = read_dp_pair(left, right, ReadOptions())
    assert torch.equal(fit_left, plain.left)
    torch.testing.assert_close(fit_right, plain.right * view_gain_map(gain, 37, 53), rtol=1e-6, atol=0)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["profile"] == str(path)
    # explicit flag wins over the profile
    res = CliRunner().invoke(app, ["fit", str(left), str(right), "-o", str(tmp_path / "out"), "--profile", str(path),
                                   "--iterations", "2,0", "--max-radius", "3", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert calls[1][0].max_radius == 3.0
    # without --iterations: the warm preset's few steps of G_D's last layer
    res = CliRunner().invoke(app, ["fit", str(left), str(right), "-o", str(tmp_path / "out"), "--profile", str(path),
                                   "--preset", "fast", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert calls[2][0].stage2_iterations == warm_iterations("fast") and calls[2][0].gd_train == "head"


def test_fit_with_mismatched_profile(tmp_path):
    from typer.testing import CliRunner

    from edgedp.cli import app

    # a capture larger than the profile's sensor is another sensor (a crop of it is fine: test_faults)
    prof = dataclasses_replace(_profile(), height=35, black_level=None, white_level=None, flat_field=None)
    path = save_profile(prof, tmp_path / "PHONE.profile")
    left, right = _pair(tmp_path)
    res = CliRunner().invoke(app, ["fit", str(left), str(right), "-o", str(tmp_path / "out"), "--profile", str(path)])
    assert res.exit_code == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "tuned on 35x53 captures, this capture is 37x53" in err[0]
    bad = tmp_path / "bad.profile"
    bad.write_bytes(b"garbage")
    res = CliRunner().invoke(app, ["fit", str(left), str(right), "-o", str(tmp_path / "out2"), "--profile", str(bad)])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and "bad.profile" in res.stderr

