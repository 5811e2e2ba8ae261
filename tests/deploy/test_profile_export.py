"""``edgedp export PHONE.profile`` (edgedp/deploy/profile_export.py) and the runner's ``instant``
subcommand on that export, run in a subprocess where ``import torch`` / ``import edgedp`` fail
(the pattern of tests/runtime/test_runners.py)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edgedp.cli import app  # noqa: E402
from edgedp.errors import InputError, OutputError  # noqa: E402
from edgedp.physics import ButterworthParams, kernel_pyramid  # noqa: E402
from edgedp.metrics import psnr  # noqa: E402
from edgedp.models import DefocusNet  # noqa: E402
from edgedp.deploy import gd_reference  # noqa: E402
from edgedp.fit import CaptureInfo  # noqa: E402
from edgedp.formats import DeviceProfile, save_profile  # noqa: E402
from edgedp.deploy.profile_export import profile_gd_source, export_profile, profile_test_image, verify_profile_export  # noqa: E402
from edgedp.synth import SynthConfig, make_scene  # noqa: E402

from edgedp_runtime import device_io, instant, schema  # noqa: E402  (numpy only)

REPO = Path(__file__).resolve().parents[2]

LAYERS, H, W = 6, 97, 131
BW = ButterworthParams(order=6.0, cutoff=2.5, beta=0.2)


def tiny_profile(**changes) -> DeviceProfile:
    """A 6-layer (radii 0..5) profile with a freshly initialised G_D whose head is randomised
    (a zero head outputs constant alphas, which would not test the graph)."""
    torch.manual_seed(0)
    net = DefocusNet(LAYERS, 0.25)
    torch.nn.init.normal_(net.head.weight, std=0.05)
    fields = dict(
        device="sim-phone", height=H, width=W, kernel_model="butterworth", butterworth=BW, radius_scale=1.0,
        layers=LAYERS, gd_width=0.25, gd_scale=2, gd_state={k: v.detach().clone() for k, v in net.state_dict().items()},
        radii=tuple(float(r) for r in range(LAYERS)), captures=(CaptureInfo("a_left.png", H, W, 0.1, 3.0),),
    )
    fields.update(changes)
    return DeviceProfile(**fields)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(profile file, export folder)."""
    root = tmp_path_factory.mktemp("profile")
    path = save_profile(tiny_profile(), root / "PHONE.profile")
    out = root / "export"
    export_profile(path, out)
    return path, out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A smooth-depth synthetic capture written as 16-bit PNGs: (folder, scene)."""
    root = tmp_path_factory.mktemp("pair")
    sc = make_scene(SynthConfig(size=(H, W), max_radius=5.0, depth="smooth", butterworth=BW, seed=11))
    for name, img in (("left", sc.left), ("right", sc.right)):
        (root / f"{name}.png").write_bytes(device_io.encode_png(device_io.to_uint16(img.numpy())))
    return root, sc


def test_export_profile_files_sidecar_and_metadata(exported):
    path, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "gd.onnx", "kernels.npy"]
    side = json.loads((out / "export.json").read_text())
    assert side["format"] == "edgedp-export" and side["format_version"] == 1 and side["source"] == "profile"
    assert side["scene_id"] == "sim-phone" and (side["height"], side["width"], side["layers"]) == (H, W, LAYERS)
    assert side["radii"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and side["kernel_size"] == 11
    gd = side["graphs"]["gd"]
    assert gd["file"] == "gd.onnx" and gd["multiple_of"] == 16 and gd["dynamic"] is True
    v = side["verification"]["gd"]
    assert v["passed"] and v["max_abs"] <= 1e-4 and len(v["sizes"]) == 2
    prof = side["profile"]
    assert prof["path"] == str(path.resolve()) and prof["captures"] == 1
    assert prof["kernel"]["butterworth"]["order"] == 6.0 and prof["gd"]["input_scale"] == 2
    assert prof["input"] == {"black_level": None, "white_level": None, "flat_field": None, "view_gain": None}
    inst = side["instant"]
    assert inst["kernels"] == "kernels.npy" and inst["pad"] == 11 // 2 + 8 and inst["fuse_window"] == 15
    assert inst["latent_reg"] == {"gain": 4.0, "floor": 1e-3, "ceil": 0.3}
    kernels = np.load(out / "kernels.npy")
    assert kernels.dtype == np.float32 and kernels.shape == (2, LAYERS, 11, 11)
    assert np.array_equal(kernels, kernel_pyramid(list(range(LAYERS)), "butterworth", BW).numpy())
    meta = {p.key: p.value for p in onnx.load(str(out / "gd.onnx")).metadata_props}
    assert meta["graph"] == "gd" and meta["scene_id"] == "sim-phone" and meta["layers"] == str(LAYERS)
    assert json.loads(meta["radii"]) == side["radii"] and meta["multiple_of"] == "16"
    # the runners' reader takes it (predict works on it unchanged)
    info = schema.load_export(out)
    assert set(info.graphs) == {"gd"} and info.radii == side["radii"]
    assert instant.load_instant(out).kernels.shape == (2, LAYERS, 11, 11)


def test_gd_onnx_matches_pytorch_on_a_capture_size(exported, pair):
    _, out = exported
    _, sc = pair
    bundle = profile_gd_source(tiny_profile(), "tiny")
    x = torch.stack([sc.left, sc.right])[None, :, :96, :128].contiguous()
    ref_alphas, ref_defocus = gd_reference(bundle, x)
    sess = ort.InferenceSession(str(out / "gd.onnx"), providers=["CPUExecutionProvider"])
    alphas, defocus = sess.run(["alphas", "defocus"], {"pair": x.numpy()})
    assert alphas.shape == (1, LAYERS, 96, 128)
    assert np.abs(alphas - ref_alphas.numpy()).max() <= 1e-5
    assert np.abs(defocus - ref_defocus.numpy()).max() <= 1e-4
    assert float(ref_alphas[0, 1:].std()) > 1e-3  # the graph really depends on the input


def test_verify_profile_export(exported, tmp_path):
    path, out = exported
    result = verify_profile_export(out)  # the profile recorded in the sidecar
    assert result["gd"]["passed"] and result["gd"]["max_abs"] <= 1e-4
    assert verify_profile_export(out, tiny_profile())["gd"]["max_abs"] <= 1e-4
    with pytest.raises(InputError, match="belongs to device"):
        verify_profile_export(out, tiny_profile(device="other"))
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    side = json.loads((copy / "export.json").read_text())
    side["source"] = "scene"
    (copy / "export.json").write_text(json.dumps(side))
    with pytest.raises(InputError, match="not a profile export"):
        verify_profile_export(copy)


def test_test_image_is_deterministic():
    a, b = profile_test_image(1008, 1344), profile_test_image(1008, 1344)
    assert torch.equal(a, b) and a.shape == (1, 192, 256)
    assert 0.05 - 1e-6 <= float(a.min()) and float(a.max()) <= 0.95 + 1e-6 and float(a.std()) > 0.05


def test_refuses_to_overwrite_and_bad_profiles(exported, tmp_path):
    path, out = exported
    with pytest.raises(OutputError, match="exists"):
        export_profile(path, out, verify=False)
    again = tmp_path / "again"
    export_profile(path, again, verify=False)
    side = export_profile(path, again, verify=False, overwrite=True, dynamic=False)
    assert side["verification"] == {} and side["graphs"]["gd"]["inputs"]["pair"] == [1, 2, 112, 144]
    with pytest.raises(InputError, match="layer radii"):
        export_profile(tiny_profile(radii=(0.0, 1.0)), tmp_path / "x", verify=False)
    wrong = tiny_profile(layers=4, radii=(0.0, 1.0, 2.0, 3.0))  # 6-layer weights, 4-layer config
    with pytest.raises(InputError, match="do not fit"):
        export_profile(wrong, tmp_path / "y", verify=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        export_profile(tiny_profile(), tmp_path / "file", verify=False)


def _one_line(result, *words):
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, err
    for w in words:
        assert w.lower() in err.lower(), (w, err)


def test_cli_exports_a_profile_and_rejects_bad_ones(exported, tmp_path):
    path, _ = exported
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(path), "-o", str(tmp_path / "cli"), "--no-verify"])
    assert res.exit_code == 0, res.output
    assert "gd.onnx, kernels.npy, export.json" in res.stdout
    assert (tmp_path / "cli" / "kernels.npy").is_file()
    res = runner.invoke(app, ["export", str(path), "-o", str(tmp_path / "cli"), "--no-verify"])
    _one_line(res, "exists", "--overwrite")
    bad = tmp_path / "bad.profile"
    bad.write_text("not a zip archive")
    _one_line(runner.invoke(app, ["export", str(bad), "-o", str(tmp_path / "b")]), "profile", "bad.profile")
    _one_line(runner.invoke(app, ["export", str(tmp_path / "missing.profile"), "-o", str(tmp_path / "c")]), "no such file")
    _one_line(runner.invoke(app, ["export", str(tmp_path / "nothing"), "-o", str(tmp_path / "d")]), "does not exist")
    # `edgedp verify` re-checks a profile export against the profile recorded in its sidecar
    res = runner.invoke(app, ["verify", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert "verify   gd" in res.stdout and " ok" in res.stdout
    res = runner.invoke(app, ["verify", str(tmp_path / "cli"), "--scene", str(bad)])
    _one_line(res, "bad.profile")


# --- the runner's instant subcommand, without torch ------------------------------------------------
# The stub environment (torch / edgedp raise on import) and the subprocess helpers are
# tests/runtime/test_runners.py's; importing the fixture makes it available here.
from tests.runtime.test_runners import assert_one_line_error as assert_runner_error  # noqa: E402
from tests.runtime.test_runners import no_torch_env  # noqa: E402, F401
from tests.runtime.test_runners import run  # noqa: E402


def test_runner_instant_end_to_end_without_torch(exported, pair, no_torch_env, tmp_path):
    _, out = exported
    folder, sc = pair
    res = tmp_path / "res"
    proc = run(["instant", out, folder / "left.png", folder / "right.png", "-o", res, "--npy", "--threads", 1], no_torch_env)
    assert proc.returncode == 0, proc.stderr
    for part in ("gd", "latent", "fuse", "total"):
        assert f" {part} " in proc.stdout, proc.stdout
    assert "black 0, white 2**bits-1, flat field none" in proc.stdout
    aif16 = device_io.decode_png((res / "allinfocus.png").read_bytes()).astype(np.float64) / 65535
    aif = np.load(res / "allinfocus.npy")
    defocus = np.load(res / "defocus.npy")
    assert aif.shape == defocus.shape == aif16.shape == (H, W) and defocus.dtype == np.float32
    assert np.abs(aif16 - np.clip(aif, 0, 1)).max() <= 0.5 / 65535 + 1e-7
    assert device_io.decode_png((res / "defocus.png").read_bytes()).shape == (H, W, 3)
    assert 0.0 <= defocus.min() and defocus.max() <= 5.0
    gt = sc.allinfocus.numpy()
    views = np.stack([sc.left.numpy(), sc.right.numpy()])
    p_in, p_out = psnr(views.mean(0), gt), psnr(np.clip(aif, 0, 1), gt)
    assert p_out > p_in + 3.0, (p_out, p_in)  # an untrained G_D: the likelihood decides
    assert np.abs(defocus - sc.defocus.numpy()).mean() < 0.5
    # the plain API gives the same numbers on the same (16-bit quantized) views
    quant = np.stack([device_io.decode_png((folder / f"{s}.png").read_bytes()) for s in ("left", "right")])
    direct = instant.run_instant(out, quant.astype(np.float32) / 65535, threads=1)
    assert np.abs(direct["allinfocus"] - aif).max() <= 1e-5
    assert np.abs(direct["defocus"] - defocus).max() <= 1e-5
    assert set(direct["seconds"]) == {"load", "gd", "latent", "fuse", "total"}
    # outputs are never replaced unasked
    proc = run(["instant", out, folder / "left.png", folder / "right.png", "-o", res], no_torch_env)
    assert_runner_error(proc, "exists; pass --overwrite")


def test_runner_instant_levels_flat_field_and_crop(exported, no_torch_env, tmp_path):
    """.npy raw codes with black/white levels, a flat field that halves the right view's gain
    and a centred crop give exactly what the plain API gives on the corrected views."""
    _, out = exported
    rng = np.random.default_rng(2)
    left = rng.uniform(0.2, 0.8, (H + 4, W + 6)).astype(np.float32)
    right = np.roll(left, 1, axis=1)
    black, white = 64.0, 1000.0
    np.save(tmp_path / "l.npy", left * white + black)
    np.save(tmp_path / "r.npy", (right * white) / 2 + black)  # the right pixels see half the light
    np.save(tmp_path / "wl.npy", np.full(left.shape, 900.0 + black, np.float32))
    np.save(tmp_path / "wr.npy", np.full(left.shape, 450.0 + black, np.float32))
    proc = run(
        ["instant", out, tmp_path / "l.npy", tmp_path / "r.npy", "-o", tmp_path / "o", "--npy",
         "--black-level", black, "--white-level", white, "--flat-field", tmp_path / "wl.npy", tmp_path / "wr.npy",
         "--crop", f"{H}x{W}"],
        no_torch_env,
    )
    assert proc.returncode == 0, proc.stderr
    views = np.stack([left, right])[:, 2 : 2 + H, 3 : 3 + W]
    direct = instant.run_instant(out, views, threads=1)
    aif = np.load(tmp_path / "o" / "allinfocus.npy")
    assert aif.shape == (H, W)
    assert np.abs(direct["allinfocus"] - aif).max() <= 1e-4
    # the profile's input settings are the defaults: put them into a copy of the export
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    side = json.loads((copy / "export.json").read_text())
    side["profile"]["input"] = {"black_level": black, "white_level": white, "flat_field": ["wl.npy", "wr.npy"]}
    (copy / "export.json").write_text(json.dumps(side))
    proc = run(["instant", copy, tmp_path / "l.npy", tmp_path / "r.npy", "-o", tmp_path / "p", "--npy", "--crop", f"{H}x{W}"],
               no_torch_env)
    assert_runner_error(proc, "flat-field frame named by the profile not found")
    shutil.copy(tmp_path / "wl.npy", copy / "wl.npy")
    shutil.copy(tmp_path / "wr.npy", copy / "wr.npy")
    proc = run(["instant", copy, tmp_path / "l.npy", tmp_path / "r.npy", "-o", tmp_path / "p", "--npy", "--crop", f"{H}x{W}"],
               no_torch_env)
    assert proc.returncode == 0, proc.stderr
    assert "(profile)" in proc.stdout
    assert np.abs(np.load(tmp_path / "p" / "allinfocus.npy") - aif).max() <= 1e-6


def test_runner_instant_errors(exported, pair, no_torch_env, tmp_path):
    _, out = exported
    folder, _ = pair
    proc = run(["instant", out, tmp_path / "nope.png", folder / "right.png", "-o", tmp_path / "o"], no_torch_env)
    assert_runner_error(proc, "left view not found")
    small = np.zeros((H - 1, W), np.uint16) + 1000
    (tmp_path / "small.png").write_bytes(device_io.encode_png(small))
    proc = run(["instant", out, folder / "left.png", tmp_path / "small.png", "-o", tmp_path / "o"], no_torch_env)
    assert_runner_error(proc, "left/right size mismatch")
    proc = run(["instant", out, folder / "left.png", folder / "right.png", "-o", tmp_path / "o", "--crop", "500x20"],
               no_torch_env)
    assert_runner_error(proc, "larger than")
    eight = np.full((H, W), 100, np.uint8)
    (tmp_path / "eight.png").write_bytes(device_io.encode_png(eight))
    proc = run(["instant", out, tmp_path / "eight.png", folder / "right.png", "-o", tmp_path / "o", "--black-level", 64],
               no_torch_env)
    assert_runner_error(proc, "8-bit image where 16-bit raw is expected")
    nan = np.full((H, W), np.nan, np.float32)
    np.save(tmp_path / "nan.npy", nan)
    proc = run(["instant", out, tmp_path / "nan.npy", tmp_path / "nan.npy", "-o", tmp_path / "o"], no_torch_env)
    assert_runner_error(proc, "NaN")
    # a scene export (no 'instant' data) is refused in one line
    scene = tmp_path / "scene"
    shutil.copytree(out, scene)
    side = json.loads((scene / "export.json").read_text())
    del side["instant"]
    (scene / "export.json").write_text(json.dumps(side))
    proc = run(["instant", scene, folder / "left.png", folder / "right.png", "-o", tmp_path / "o"], no_torch_env)
    assert_runner_error(proc, "no 'instant' data")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_runner_instant_applies_the_profiles_view_gain(pair, no_torch_env, tmp_path):
    """A profile that measured a left/right gain (edgedp tune) corrects the right view of a capture
    read like its captures (no flat field): the runner's output equals the plain API's on views
    whose right view is multiplied by the gain; another flat field switches the gain off."""
    gain = (0.1, 0.0, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0)
    path = save_profile(tiny_profile(view_gain=gain, asymmetry=1.105), tmp_path / "GAIN.profile")
    out = tmp_path / "export"
    side = export_profile(path, out, verify=False)
    assert side["profile"]["input"]["view_gain"] == {"model": "exp-poly3", "coefficients": list(gain)}
    folder, _ = pair
    proc = run(["instant", out, folder / "left.png", folder / "right.png", "-o", tmp_path / "res", "--npy",
                "--threads", 1], no_torch_env)
    assert proc.returncode == 0, proc.stderr
    assert "profile view gain" in proc.stdout
    quant = np.stack([device_io.decode_png((folder / f"{s}.png").read_bytes()) for s in ("left", "right")]).astype(np.float32) / 65535
    corrected = quant.copy()
    corrected[1] *= instant.view_gain_map(gain, H, W)
    direct = instant.run_instant(out, corrected, threads=1)
    assert np.abs(direct["allinfocus"] - np.load(tmp_path / "res" / "allinfocus.npy")).max() <= 1e-5
    plain = instant.run_instant(out, quant, threads=1)
    assert np.abs(plain["allinfocus"] - direct["allinfocus"]).max() > 1e-3  # the gain did change it
    # with another flat field (here an all-equal pair of white frames: gain 1) the profile's gain is off
    white = np.full((H, W), 30000, np.uint16)
    np.save(tmp_path / "wl.npy", white)
    np.save(tmp_path / "wr.npy", white)
    proc = run(["instant", out, folder / "left.png", folder / "right.png", "-o", tmp_path / "res2", "--npy",
                "--flat-field", tmp_path / "wl.npy", tmp_path / "wr.npy", "--threads", 1], no_torch_env)
    assert proc.returncode == 0, proc.stderr
    assert "profile view gain" not in proc.stdout
    assert np.abs(np.load(tmp_path / "res2" / "allinfocus.npy") - plain["allinfocus"]).max() <= 1e-5


def test_runner_instant_refuses_a_frame_beyond_its_memory_budget(exported, no_torch_env, tmp_path):
    """The instant path is not tiled: a frame whose estimated peak (instant.instant_bytes)
    passes --max-memory is refused in one line naming the size and --max-memory, before G_D
    runs and with nothing written; a bad --max-memory is one line too."""
    _, out = exported
    layers = len(json.loads((out / "export.json").read_text())["radii"])
    # a 6000 x 8000 frame (48 MP) needs more than 0.5 GiB; written as a constant .npy the test stays small
    h, w = 6000, 8000
    assert instant.instant_bytes(h, w, layers) > 2**30 > instant.instant_bytes(H, W, layers)
    view = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(h, w))
    view[:] = 0.5
    del view
    proc = run(["instant", out, tmp_path / "big.npy", tmp_path / "big.npy", "-o", tmp_path / "o", "--max-memory", 1],
               no_torch_env)
    assert_runner_error(proc, f"a {h}x{w} frame with {layers} layers needs about")
    assert "--max-memory 1" in proc.stderr and "raise --max-memory" in proc.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    proc = run(["instant", out, tmp_path / "big.npy", tmp_path / "big.npy", "-o", tmp_path / "o", "--max-memory", "0.1"],
               no_torch_env)
    assert_runner_error(proc, "--max-memory 0.1: at least 0.5 GiB is needed")


# --- a profile with a kernel field ----------------------------------------------------------------
@pytest.fixture(scope="module")
def field_export(tmp_path_factory):
    """A tiny profile carrying tests/test_kernel_field.py's asymmetric 2x3 analytic field, exported
    with ``edgedp export PHONE.profile``: (profile file, export folder, CLI stdout)."""
    from tests.physics.test_kernel_field import analytic_field

    root = tmp_path_factory.mktemp("field")
    field = analytic_field((2, 3), 6.0, 17).to(dtype=torch.float32)
    path = save_profile(tiny_profile(kernel_field=field), root / "PHONE.profile")
    res = CliRunner().invoke(app, ["export", str(path), "-o", str(root / "export"), "--no-verify"])
    assert res.exit_code == 0, res.output
    return path, root / "export", res.stdout


def test_export_profile_with_a_field_uses_its_mean_when_asked(field_export, tmp_path):
    """With --instant-mean-kernels the instant path gets the field's mean kernels (the fit's
    uniform kernels with a field) and a note says so; the flag on a scene is refused in one line."""
    path, out, _ = field_export
    plain = tmp_path / "plain"
    res = CliRunner().invoke(app, ["export", str(path), "-o", str(plain), "--no-verify", "--instant-mean-kernels"])
    assert res.exit_code == 0, res.output
    assert not (plain / "patch_kernels.npy").exists()
    assert "note     the profile's 2x3 kernel field goes to the instant path as its mean kernels" in res.stdout
    assert np.abs(np.load(plain / "kernels.npy") - np.load(out / "kernels.npy")).max() == 0  # the same mean
    side = json.loads((plain / "export.json").read_text())
    assert "patch_kernels" not in side["instant"] and side["notes"]
    res = CliRunner().invoke(app, ["export", str(tmp_path / "no_scene"), "-o", str(tmp_path / "o"), "--instant-mean-kernels"])
    assert res.exit_code == 2 and "--instant-field/--instant-mean-kernels does not apply to a scene export" in res.stderr, res.stderr


def test_export_profile_instant_groups(field_export, tmp_path):
    """--instant-groups N sets the sidecar's kernel_groups, which the runtime reads and applies
    (fewer groups: a different result); 0, with --instant-mean-kernels, on a scene or on a
    profile without a field it is one line (exit 2) and nothing is written."""
    path, out, _ = field_export
    two = tmp_path / "two"
    res = CliRunner().invoke(app, ["export", str(path), "-o", str(two), "--no-verify", "--instant-groups", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((two / "export.json").read_text())["instant"]["kernel_groups"] == 2
    loaded = instant.load_instant(two)
    assert loaded.config.kernel_groups == 2
    views = np.random.default_rng(0).random((2, H, W)).astype(np.float32)
    alphas = np.ones((LAYERS, H, W), np.float32)
    radii = np.arange(LAYERS, dtype=np.float32)
    grouped = instant.instant_predict(views, alphas, loaded.patch_kernels, radii, config=loaded.config)[0]
    exact = instant.instant_predict(views, alphas, loaded.patch_kernels, radii, config=instant.load_instant(out).config)[0]
    assert np.abs(grouped - exact).max() > 1e-4  # 2 groups of the 6 distinct cells: merged kernels
    plain = save_profile(tiny_profile(), tmp_path / "plain.profile")
    for source, flags, message in (
        (path, ["--instant-groups", "0"], "--instant-groups 0: must be >= 1"),
        (path, ["--instant-groups", "3", "--instant-mean-kernels"], "does not apply with --instant-mean-kernels"),
        (tmp_path / "no_scene", ["--instant-groups", "3"], "--instant-groups does not apply to a scene export"),
        (plain, ["--instant-groups", "3"], "this profile has no kernel field"),
    ):
        target = tmp_path / "refused"
        res = CliRunner().invoke(app, ["export", str(source), "-o", str(target), "--no-verify", *flags])
        assert res.exit_code == 2 and message in res.stderr, (flags, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
        assert not target.exists() or not any(target.iterdir())


def test_export_profile_with_a_field_writes_patch_kernels(field_export, tmp_path):
    from edgedp.fit import FitConfig
    from edgedp.fit.pipeline import field_kernels
    from edgedp.formats import load_profile

    path, out, stdout = field_export
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "gd.onnx", "kernels.npy", "patch_kernels.npy"]
    assert "gd.onnx, kernels.npy, patch_kernels.npy, export.json" in stdout
    side = json.loads((out / "export.json").read_text())
    inst = side["instant"]
    pk = np.load(out / "patch_kernels.npy")
    k = side["kernel_size"]
    assert inst["patch_kernels"] == "patch_kernels.npy" and inst["patch_grid"] == [2, 3] and inst["pad"] == k // 2 + 8
    # the instant path takes no TV step (profile_export.INSTANT_TV_ITERATIONS) and at most 8 groups of cells
    assert inst["deconvolution"]["iterations"] == 0 and inst["kernel_groups"] == 8
    assert instant.InstantConfig.from_sidecar(inst).kernel_groups == 8
    # one bound: the fit's, the profile export's and the runtime's default for a sidecar without it
    from edgedp.fit import FIELD_GROUPS

    assert FIELD_GROUPS == instant.InstantConfig().kernel_groups == inst["kernel_groups"]
    assert pk.dtype == np.float32 and pk.shape == (2, 3, 2, LAYERS, k, k) and k >= 11
    # what edgedp fit --profile uses: the field's layer kernels at the fit's disparity per radius
    profile = load_profile(path)
    want = field_kernels(profile.kernel_field, torch.tensor(profile.radii), profile.apply_to(FitConfig()), 11).numpy()
    assert np.abs(pk - want).max() <= 1e-6
    assert np.abs(pk[0, 0] - pk[1, 2]).max() > 1e-2  # the cells differ
    kernels = np.load(out / "kernels.npy")
    assert kernels.shape == (2, LAYERS, k, k) and np.abs(kernels - pk.mean(axis=(0, 1))).max() <= 1e-6
    loaded = instant.load_instant(out)
    assert loaded.patch_kernels.shape == pk.shape and loaded.predict_kernels is loaded.patch_kernels
    assert instant.describe_kernels(loaded) == f"kernel field 2x3 cells (patch_kernels.npy), {LAYERS} layers, K {k}"
    # re-exporting a profile without a field over it leaves no stale patch_kernels.npy
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    plain = save_profile(tiny_profile(), tmp_path / "plain.profile")
    res = CliRunner().invoke(app, ["export", str(plain), "-o", str(copy), "--no-verify", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert not (copy / "patch_kernels.npy").exists() and "patch_kernels" not in json.loads((copy / "export.json").read_text())["instant"]
    assert json.loads((copy / "export.json").read_text())["instant"]["deconvolution"]["iterations"] == 0
    assert "kernel_groups" not in json.loads((copy / "export.json").read_text())["instant"]
    assert instant.load_instant(copy).patch_kernels is None


def test_runner_instant_with_a_field(field_export, pair, no_torch_env, tmp_path):
    """``edgedp-runtime instant`` on a profile export with a field (no torch): it says so, runs
    the grouped path and gives the plain API's numbers; a patch_kernels.npy of the wrong shape,
    a missing grid or kernel_groups < 1 is one line."""
    _, out, _ = field_export
    folder, sc = pair
    res = tmp_path / "res"
    proc = run(["instant", out, folder / "left.png", folder / "right.png", "-o", res, "--npy", "--threads", 1], no_torch_env)
    assert proc.returncode == 0, proc.stderr
    assert "kernels: kernel field 2x3 cells (patch_kernels.npy)" in proc.stdout, proc.stdout
    aif = np.load(res / "allinfocus.npy")
    defocus = np.load(res / "defocus.npy")
    assert aif.shape == defocus.shape == (H, W) and np.isfinite(aif).all() and 0.0 <= defocus.min() <= defocus.max() <= 5.0
    quant = np.stack([device_io.decode_png((folder / f"{s}.png").read_bytes()) for s in ("left", "right")])
    direct = instant.run_instant(out, quant.astype(np.float32) / 65535, threads=1)
    assert np.abs(direct["allinfocus"] - aif).max() <= 1e-5
    uniform = instant.instant_predict(quant.astype(np.float32) / 65535, np.ones((LAYERS, H, W), np.float32),
                                      instant.load_instant(out).kernels, np.arange(LAYERS, dtype=np.float32))[0]
    patch = instant.instant_predict(quant.astype(np.float32) / 65535, np.ones((LAYERS, H, W), np.float32),
                                    instant.load_instant(out).patch_kernels, np.arange(LAYERS, dtype=np.float32))[0]
    assert np.abs(patch - uniform).max() > 1e-3  # the field's cells are used, not only their mean
    # a bad patch_kernels.npy shape, a missing grid: one line each
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    np.save(bad / "patch_kernels.npy", np.load(out / "patch_kernels.npy")[:, :2])
    proc = run(["instant", bad, folder / "left.png", folder / "right.png", "-o", tmp_path / "o"], no_torch_env)
    assert_runner_error(proc, "patch_kernels.npy is (2, 2, 2, 6,")
    assert "expected (Pr, Pc, 2, L, K, K) = (2, 3, 2, 6," in proc.stderr
    shutil.copy(out / "patch_kernels.npy", bad / "patch_kernels.npy")
    side = json.loads((bad / "export.json").read_text())
    del side["instant"]["patch_grid"]
    (bad / "export.json").write_text(json.dumps(side))
    proc = run(["instant", bad, folder / "left.png", folder / "right.png", "-o", tmp_path / "o"], no_torch_env)
    assert_runner_error(proc, "without a valid \"patch_grid\"")
    side["instant"].update(patch_grid=[2, 3], kernel_groups=0)
    (bad / "export.json").write_text(json.dumps(side))
    proc = run(["instant", bad, folder / "left.png", folder / "right.png", "-o", tmp_path / "o"], no_torch_env)
    assert_runner_error(proc, "kernel_groups=0 must be at least 1")
    del side["instant"]["kernel_groups"]
    (bad / "patch_kernels.npy").unlink()
    side["instant"]["patch_grid"] = [2, 3]
    (bad / "export.json").write_text(json.dumps(side))
    proc = run(["instant", bad, folder / "left.png", folder / "right.png", "-o", tmp_path / "o"], no_torch_env)
    assert_runner_error(proc, "instant patch kernels not found")


def test_run_export_reads_a_profile_once_and_records_its_path(tmp_path, monkeypatch):
    import edgedp.deploy.profile_export as profile_export
    from edgedp.deploy import run_export

    path = save_profile(tiny_profile(), tmp_path / "PHONE.profile")
    reads = []
    real = profile_export.load_profile
    monkeypatch.setattr(profile_export, "load_profile", lambda p: reads.append(p) or real(p))
    side = run_export(path, tmp_path / "out", "onnx", {"verify": False})
    assert reads == [path]
    assert side["profile"]["path"] == str(path.resolve())
