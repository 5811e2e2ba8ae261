"""render.onnx / refocus.onnx: the baked scene graphs match PyTorch, carry metadata and a sidecar,
stay at opset 17 without FFT/CumSum ops, and the export / verify commands behave."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from edgedp.formats import load_bundle, save_bundle  # noqa: E402
from edgedp.cli import app  # noqa: E402
from edgedp.errors import OutputError  # noqa: E402
from edgedp.fit import FitConfig, FitResult  # noqa: E402
from edgedp.physics import behind_radii, kernel_pyramid  # noqa: E402
from edgedp.models import DefocusNet  # noqa: E402
from edgedp.deploy.onnx_export import FORBIDDEN_OPS, RenderModule, factor_kernels, export_scene, render_reference  # noqa: E402
from edgedp.deploy import default_opset as onnx_opset  # noqa: E402
from edgedp.deploy import op_types as onnx_ops  # noqa: E402
from edgedp.physics import over_weights  # noqa: E402

H, W = 37, 53


def make_bundle(folder, layers: int = 5, patches: tuple[int, int] | None = None, seed: int = 0):
    """A small saved bundle: random alphas and latent, Butterworth pyramid (optionally per patch,
    with a different radius scale per cell so the patches really differ)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DefocusNet(layers, width=0.25)
    radii = behind_radii(layers - 1, layers)
    alphas = torch.rand(layers, H, W, generator=g)
    alphas[0] = 1
    weights = over_weights(alphas)
    latent = torch.rand(1, layers, H, W, generator=g)
    kernels = kernel_pyramid(radii)
    patch = None
    if patches is not None:
        pr, pc = patches
        cells = [kernel_pyramid(radii * (0.6 + 0.4 * torch.rand((), generator=g)), size=kernels.shape[-1])
                 for _ in range(pr * pc)]
        patch = torch.stack(cells).reshape(pr, pc, *kernels.shape)
    result = FitResult(
        allinfocus=(latent * weights).sum(1), defocus=(weights * radii[:, None, None]).sum(0), weights=weights,
        alphas=alphas, latent=latent, radii=radii, kernels=kernels, patch_kernels=patch,
        gd_state={k: v.clone() for k, v in net.state_dict().items()},
        gd_config=net.config() | {"input_scale": 1}, focus="front",
        config=FitConfig(focus="front", max_radius=float(radii.max()), layers=layers, seed=seed),
        stages=[], disparity={},
    )
    return load_bundle(save_bundle(result, folder))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("ex") / "scene")


@pytest.fixture(scope="module")
def exported(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("exo")
    return out, export_scene(bundle, out, gd=False)


def run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def rel(a, b) -> float:
    a, b = (np.asarray(t.detach().numpy() if isinstance(t, torch.Tensor) else t, np.float64) for t in (a, b))
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_render_matches_pytorch(exported, bundle):
    out, side = exported
    latent = np.load(out / "render_latent.npy")
    assert latent.shape == (1, 5, H, W)
    got = run(out / "render.onnx", {"latent": latent})
    ref = render_reference(bundle, torch.from_numpy(latent))
    for name in ("left", "right", "allinfocus"):
        assert got[name].shape == (1, 1, H, W)
        assert rel(got[name], ref[name]) < 1e-4
    # another latent (not the baked test input) too
    other = np.random.default_rng(1).random((1, 5, H, W), dtype=np.float32)
    got = run(out / "render.onnx", {"latent": other})
    ref = render_reference(bundle, torch.from_numpy(other))
    assert rel(got["left"], ref["left"]) < 1e-3 and rel(got["right"], ref["right"]) < 1e-3
    v = side["verification"]["render"]
    assert v["passed"] and v["max_rel"] < 1e-4


def test_render_patchwise_matches_pytorch(tmp_path):
    b = make_bundle(tmp_path / "scene", layers=4, patches=(2, 3), seed=3)
    side = export_scene(b, tmp_path / "x", gd=False)
    assert side["verification"]["render"]["passed"], side["verification"]
    assert side["verification"]["render"]["max_rel"] < 1e-4
    assert side["kernel_model"].endswith("+patches")
    # the patch kernels differ, so the uniform render must differ from the exported one
    latent = np.load(tmp_path / "x" / "render_latent.npy")
    got = run(tmp_path / "x" / "render.onnx", {"latent": latent})
    b.patch_kernels = None
    uni = render_reference(b, torch.from_numpy(latent))
    assert rel(got["left"], uni["left"]) > 1e-3


def test_factor_is_low_rank_for_large_kernels_and_accurate():
    k = kernel_pyramid(torch.tensor([0.0, 3.0, 12.0]), size=25)
    facs = [factor_kernels(k[:, i], 2e-4) for i in range(3)]
    assert facs[0].macs == 2  # delta: a 1x1 "conv" per view
    assert facs[2].vert is not None and facs[2].macs < 0.6 * 2 * 25 * 25
    x = torch.rand(1, 3, 41, 43, generator=torch.Generator().manual_seed(0))
    wts = torch.full((3, 41, 43), 1 / 3)
    mod = RenderModule(wts, k)
    from edgedp.physics import render_dual_pixel

    ref = render_dual_pixel(x, wts[None], k, method="direct")
    left, right, _ = mod(x)
    assert rel(left, ref[:, 0:1]) < 1e-4 and rel(right, ref[:, 1:2]) < 1e-4


def test_refocus(exported, bundle):
    out, side = exported
    image = np.load(out / "allinfocus.npy")
    path = out / "refocus.onnx"

    def refocus(focus, aperture):
        feeds = {"image": image, "focus": np.array(focus, np.float32), "aperture": np.array(aperture, np.float32)}
        return run(path, feeds)["refocused"]

    # aperture 0: pinhole, the image itself
    np.testing.assert_allclose(refocus(0.0, 0.0), image, atol=1e-6)
    np.testing.assert_allclose(refocus(2.5, 0.0), image, atol=1e-6)
    # captured focus and aperture: close to the captured blur (left + right) / 2 of the render
    ref = render_reference(bundle, torch.from_numpy(np.load(out / "render_latent.npy")))
    captured = 0.5 * (ref["left"] + ref["right"]).numpy()
    near = refocus(0.0, 1.0)
    err_captured = np.abs(near - captured).mean()
    assert err_captured < 0.5 * np.abs(image - captured).mean()
    # refocusing moves the blur: focus at the far layers sharpens them, blurs the near ones
    assert np.abs(refocus(4.0, 1.0) - near).mean() > 1e-3
    assert side["verification"]["refocus"]["passed"]


def test_opset_and_ops(exported):
    out, side = exported
    for name in ("render.onnx", "refocus.onnx"):
        assert onnx_opset(out / name) == 17
        model = onnx.load(str(out / name))
        onnx.checker.check_model(model)
        assert not onnx_ops(out / name) & FORBIDDEN_OPS
        assert onnx_ops(out / name) <= {
            "Pad", "Conv", "Mul", "Add", "Sub", "Abs", "Relu", "Clip", "ReduceSum", "Slice", "Reshape",
            "Transpose", "Concat", "Constant", "ConstantOfShape", "Cast", "Gather", "Unsqueeze", "Shape",
        }


def test_metadata_and_sidecar(exported, bundle):
    out, side = exported
    on_disk = json.loads((out / "export.json").read_text())
    assert on_disk == side
    assert side["format"] == "edgedp-export" and side["format_version"] == 1
    assert side["scene_id"] == bundle.meta["bundle_id"]
    assert (side["height"], side["width"], side["layers"], side["opset"]) == (H, W, 5, 17)
    assert side["radii"] == pytest.approx(bundle.radii.tolist())
    assert side["kernel_size"] == bundle.kernels.shape[-1]
    assert side["graphs"]["render"]["inputs"] == {"latent": [1, 5, H, W]}
    assert side["graphs"]["refocus"]["outputs"] == {"refocused": [1, 1, H, W]}
    for name in ("render", "refocus"):
        g = side["graphs"][name]
        assert (out / g["file"]).is_file() and (out / g["test_input"]).is_file()
        meta = {p.key: p.value for p in onnx.load(str(out / g["file"])).metadata_props}
        assert meta["scene_id"] == side["scene_id"] and meta["opset"] == "17"
        assert meta["layers"] == "5" and meta["height"] == str(H) and meta["width"] == str(W)
        for key in ("edgedp_version", "kernel_model", "input_normalization", "inputs", "outputs"):
            assert meta[key]
        assert json.loads(meta["inputs"]) == g["inputs"]
    assert set(side["verification"]) == {"render", "refocus"}


def test_refuses_existing_output(exported, bundle):
    out, _ = exported
    with pytest.raises(OutputError, match="exists"):
        export_scene(bundle, out, gd=False)


def test_cli_export_verify(tmp_path):
    b = make_bundle(tmp_path / "fit" / "scene", layers=3)
    runner = CliRunner()
    out = tmp_path / "x"
    res = runner.invoke(app, ["export", str(tmp_path / "fit"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "verify   render" in res.output and "verify   refocus" in res.output
    side = json.loads((out / "export.json").read_text())
    assert side["bundle"] == str(b.folder.resolve())
    res = runner.invoke(app, ["verify", str(out)])
    assert res.exit_code == 0, res.output
    assert "max abs" in res.output
    # a tolerance nothing meets: exit 1
    res = runner.invoke(app, ["verify", str(out), "--atol", "0", "--rtol", "0"])
    assert res.exit_code == 1
    # existing output without --overwrite, missing scene dir, missing export: one line, exit 2
    res = runner.invoke(app, ["export", str(tmp_path / "fit" / "scene"), "-o", str(out), "--no-verify"])
    assert res.exit_code == 2 and res.output.strip().startswith("error:") and "--overwrite" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["export", str(tmp_path / "missing"), "-o", str(tmp_path / "y")])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "does not exist" in res.output
    res = runner.invoke(app, ["verify", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["export", "--help"])
    assert res.exit_code == 0 and "edgedp export out -o out/export" in res.output


def _one_line(res, needle: str) -> None:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output


def test_cli_refuses_options_a_format_or_source_ignores(tmp_path):
    """--half / --workspace with --format onnx, --rtol on a profile, tolerances with --no-verify and
    out-of-range values (the export battery's --opset 99 traceback) end in one line, exit 2,
    before anything is written; options that apply are used, not dropped (--atol reaches gd)."""
    from edgedp.formats import save_profile
    from tests.deploy.test_profile_export import tiny_profile

    make_bundle(tmp_path / "fit" / "scene", layers=3)
    runner = CliRunner()
    out = tmp_path / "x"
    scene = str(tmp_path / "fit")
    for args, needle in (
        (["--half"], "--half applies to --format engine only"),
        (["--workspace", "512"], "--workspace applies to --format engine only"),
        (["--opset", "99"], "--opset 99: edgedp exports opsets 13 to 17"),
        (["--opset", "12"], "--opset 12"),
        (["--no-verify", "--atol", "1e-3"], "--atol is a verification tolerance"),
        (["--rtol", "nan"], "--rtol nan: must be a finite number"),
        (["--atol", "-1"], "--atol -1.0: must be a finite number >= 0"),
        (["--format", "engine", "--workspace", "0"], "--workspace 0"),
    ):
        _one_line(runner.invoke(app, ["export", scene, "-o", str(out), *args]), needle)
        assert not out.exists()
    profile = save_profile(tiny_profile(), tmp_path / "PHONE.profile")
    _one_line(runner.invoke(app, ["export", str(profile), "-o", str(out), "--rtol", "1e-3"]),
              "--rtol does not apply to a profile export")
    assert not out.exists()
    res = runner.invoke(app, ["export", str(profile), "-o", str(tmp_path / "p"), "--atol", "1e-3"])
    assert res.exit_code == 0, res.output
    _one_line(runner.invoke(app, ["verify", str(tmp_path / "p"), "--rtol", "1e-3"]), "--rtol does not apply")
    # --atol reaches the scene's gd verification (it was dropped); nothing meets 1e-12: exit 1
    res = runner.invoke(app, ["export", scene, "-o", str(out), "--atol", "1e-12", "--rtol", "0"])
    assert res.exit_code == 1, res.output
    side = json.loads((out / "export.json").read_text())
    assert side["verification"]["gd"]["atol"] == 1e-12 and side["verification"]["render"]["rtol"] == 0.0
    assert side["source"] == "scene" and side["runtime_version"]


def test_overwrite_removes_engines_of_the_replaced_graphs(tmp_path):
    """An engine left by an earlier --format engine export must not outlive the ONNX graph it was
    built from: --overwrite removes the known export files the new export does not write."""
    make_bundle(tmp_path / "fit" / "scene", layers=3)
    out = tmp_path / "x"
    runner = CliRunner()
    assert runner.invoke(app, ["export", str(tmp_path / "fit"), "-o", str(out), "--no-verify"]).exit_code == 0
    (out / "render.engine").write_bytes(b"old engine")
    (out / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["export", str(tmp_path / "fit"), "-o", str(out), "--no-verify", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert not (out / "render.engine").exists() and (out / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("opset", [13, 17])
def test_opsets_13_to_17_export_trt_clean(bundle, tmp_path, opset):
    from edgedp.deploy import ExportConfig
    from edgedp.deploy import unsupported_trt_ops

    side = export_scene(bundle, tmp_path, ExportConfig(opset=opset), gd=True)
    for g in side["graphs"].values():
        assert onnx_opset(tmp_path / g["file"]) == opset
        assert unsupported_trt_ops(tmp_path / g["file"]) == []
    assert all(v["passed"] for v in side["verification"].values()), side["verification"]
