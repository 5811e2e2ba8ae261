"""gd.onnx: G_D exported alone (DP pair in, alphas and defocus out, dynamic H, W) matches the
PyTorch computation of the fit (gd_input -> G_D -> upsample_logits -> alphas_from_logits ->
over_weights) at two sizes, carries its metadata, and follows the bundle's layer count."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from edgedp.formats import load_bundle, save_bundle  # noqa: E402
from edgedp.errors import InputError  # noqa: E402
from edgedp.fit import FitConfig, FitResult  # noqa: E402
from edgedp.physics import behind_radii, kernel_pyramid  # noqa: E402
from edgedp.models import DefocusNet  # noqa: E402
from edgedp.deploy import GDExportModule, export_gd_onnx, gd_reference, verify_gd_onnx  # noqa: E402
from edgedp.physics import over_weights  # noqa: E402


def gd_bundle(folder, layers: int = 5, h: int = 37, w: int = 53, scale: int = 2, seed: int = 0):
    """A small saved bundle with a real G_D (width 0.25) whose head is random, so the alphas vary."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DefocusNet(layers, width=0.25)
    with torch.no_grad():
        net.head.weight.normal_(0, 0.3, generator=g)
    radii = behind_radii(layers - 1, layers)
    alphas = torch.rand(layers, h, w, generator=g)
    alphas[0] = 1
    weights = over_weights(alphas)
    latent = torch.rand(1, layers, h, w, generator=g)
    result = FitResult(
        allinfocus=(latent * weights).sum(1), defocus=(weights * radii[:, None, None]).sum(0), weights=weights,
        alphas=alphas, latent=latent, radii=radii, kernels=kernel_pyramid(radii), patch_kernels=None,
        gd_state={k: v.clone() for k, v in net.state_dict().items()},
        gd_config=net.config() | {"input_scale": scale}, focus="front",
        config=FitConfig(focus="front", max_radius=float(radii.max()), layers=layers, seed=seed),
        stages=[], disparity={},
    )
    return load_bundle(save_bundle(result, folder))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return gd_bundle(tmp_path_factory.mktemp("gd") / "scene")


@pytest.fixture(scope="module")
def exported(bundle, tmp_path_factory):
    path = tmp_path_factory.mktemp("gdx") / "gd.onnx"
    return path, export_gd_onnx(bundle, path)


def test_sidecar_entry(exported, bundle):
    path, entry = exported
    assert entry["file"] == "gd.onnx"
    assert entry["inputs"] == {"pair": [1, 2, "H", "W"]}
    assert entry["outputs"] == {"alphas": [1, 5, "H", "W"], "defocus": [1, 1, "H", "W"]}
    assert entry["dynamic"] is True and entry["multiple_of"] == 16 and entry["input_scale"] == 2
    assert "input_normalization" in entry and "[0, 1]" in entry["input_normalization"]
    json.dumps(entry)  # the sidecar is JSON


def test_matches_pytorch_at_two_sizes(exported, bundle):
    path, _ = exported
    report = verify_gd_onnx(bundle, path, sizes=[(48, 64), (80, 32)], atol=1e-4)
    assert report["sizes"] == [[48, 64], [80, 32]]
    assert report["passed"], report
    assert report["max_abs"] < 1e-4 and report["max_rel"] < 1e-4
    default = verify_gd_onnx(bundle, path)  # bundle size rounded up (48x64) and a smaller one
    assert len(default["sizes"]) == 2 and default["sizes"][0] != default["sizes"][1]
    assert default["passed"], default


def test_outputs_are_a_partition_and_defocus_in_range(exported, bundle):
    import onnxruntime as ort

    path, _ = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pair = torch.rand(1, 2, 32, 48, generator=torch.Generator().manual_seed(3))
    alphas, defocus = sess.run(None, {"pair": pair.numpy()})
    assert alphas.shape == (1, 5, 32, 48) and defocus.shape == (1, 1, 32, 48)
    assert (alphas[:, 0] == 1).all()
    assert alphas.min() >= 0 and alphas.max() <= 1 and alphas[:, 1:].std() > 1e-3  # really varies
    assert defocus.min() >= 0 and defocus.max() <= 4 + 1e-5
    ref_a, ref_d = gd_reference(bundle, pair)
    assert abs(ref_d.numpy() - defocus).max() < 1e-4


def test_metadata(exported, bundle):
    path, _ = exported
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["scene_id"] == bundle.meta["bundle_id"] and len(meta["scene_id"]) == 32
    assert meta["layers"] == "5" and json.loads(meta["radii"]) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert meta["opset"] == "17" and meta["input_scale"] == "2" and meta["multiple_of"] == "16"
    assert meta["edgedp_version"] and meta["input_normalization"] and meta["graph"] == "gd"
    assert [i.version for i in model.opset_import if i.domain in ("", "ai.onnx")] == [17]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 2, "H", "W"]


def test_other_layer_count_and_static(tmp_path):
    b3 = gd_bundle(tmp_path / "s3", layers=3, h=21, w=19, scale=1, seed=1)
    path = tmp_path / "gd3.onnx"
    entry = export_gd_onnx(b3, path, dynamic=False)
    assert entry["multiple_of"] == 8 and entry["inputs"] == {"pair": [1, 2, 24, 24]}
    assert entry["outputs"]["alphas"] == [1, 3, 24, 24]
    model = onnx.load(str(path))
    out = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert out == {"alphas": [1, 3, 24, 24], "defocus": [1, 1, 24, 24]}
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["layers"] == "3" and meta["scene_id"] == b3.meta["bundle_id"] and meta["dynamic"] == "false"
    report = verify_gd_onnx(b3, path)
    assert report["sizes"] == [[24, 24]] and report["passed"], report
    with pytest.raises(InputError, match="multiple of 8"):
        verify_gd_onnx(b3, path, sizes=[(20, 24)])


def test_large_input_keeps_1e4(exported, bundle):
    """At 1008x1344 (677k values per reduction) on a bright, low-contrast pair (mean errors are
    amplified by 1 / std) the standardization must not lose float32 accuracy in the runtime's
    reductions (one flat ReduceSum over the pair gave ~1e-4 px of defocus on a fitted scene)."""
    import onnxruntime as ort

    path, _ = exported
    pair = 0.9 + 0.01 * torch.rand(1, 2, 1008, 1344, generator=torch.Generator().manual_seed(5))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    alphas, defocus = sess.run(None, {"pair": pair.numpy()})
    ref_a, ref_d = gd_reference(bundle, pair)
    assert abs(ref_a.numpy() - alphas).max() < 2e-5
    assert abs(ref_d.numpy() - defocus).max() < 2e-5
    report = verify_gd_onnx(bundle, path, sizes=[(1008, 1344)])
    assert report["max_abs"] < 2e-5, report


def test_standardization_is_accurate_in_the_runtime(tmp_path):
    """G_D amplifies errors of the standardized input; with a stand-in net of gain ~5 on a bright,
    low-contrast 1008x1344 pair, ONNX Runtime must agree with torch (a single flat ReduceMean over
    all 677k values did not: 0.16 in alpha here, ~1e-4 px of defocus on a fitted scene)."""
    import onnxruntime as ort

    torch.manual_seed(0)
    layers = 4
    net = torch.nn.Sequential(torch.nn.AvgPool2d(16), torch.nn.Conv2d(2, layers, 1))
    with torch.no_grad():
        net[1].weight.normal_(0, 5.0)
        net[1].bias.zero_()
    module = GDExportModule(net, 2, torch.arange(layers, dtype=torch.float32)).eval()
    pair = 0.9 + 0.01 * torch.rand(1, 2, 1008, 1344, generator=torch.Generator().manual_seed(5))
    path = tmp_path / "std.onnx"
    torch.onnx.export(module, (pair[..., :64, :64],), str(path), input_names=["pair"], output_names=["alphas", "defocus"],
                      dynamic_axes={"pair": {2: "H", 3: "W"}}, opset_version=17, dynamo=False)
    alphas, defocus = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pair": pair.numpy()})
    with torch.no_grad():
        ref_a, ref_d = module(pair.double().float())
    # float32 rounding of 0.9 + 0.01 u alone is ~1e-5 of the contrast; the flat reduction was 0.16 off
    assert abs(ref_a.numpy() - alphas).max() < 5e-4
    assert abs(ref_d.numpy() - defocus).max() < 1e-3


class _OldStandardize(torch.nn.Module):
    """The standardization before issue 9: the Bessel factor from the count n itself."""

    def forward(self, x):
        mean = x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True).mean(dim=1, keepdim=True)
        xc = x - mean
        n = x.shape[1] * x.shape[2] * x.shape[3]
        msq = (xc * xc).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True).mean(dim=1, keepdim=True)
        return xc / (msq * (n / (n - 1))).sqrt().clamp_min(1e-6)


def test_fp16_standardization_stays_finite(tmp_path):
    """At 1008x1344 (n = 2 * 504 * 672 = 677,376 > FP16's 65,504 after the 2x pooling) the old
    Bessel factor overflows in FP16: the FP16 emulation of its graph is NaN everywhere (what the
    issue reports for TensorRT FP16 engines), while the reciprocal form stays finite and close to
    FP32.  Also proves the emulation really rounds (it is not a no-op)."""
    from edgedp.deploy import Standardize
    from edgedp.deploy.onnx_tools import ort_session

    torch.manual_seed(0)
    layers = 4
    net = torch.nn.Sequential(torch.nn.AvgPool2d(16), torch.nn.Conv2d(2, layers, 1))
    pair = 0.3 + 0.4 * torch.rand(1, 2, 1008, 1344, generator=torch.Generator().manual_seed(1))
    results = {}
    for name, std in (("old", _OldStandardize()), ("new", Standardize())):
        module = GDExportModule(net, 2, torch.arange(layers, dtype=torch.float32)).eval()
        module.standardize = std
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(module, (pair[..., :64, :64],), str(path), input_names=["pair"], output_names=["alphas", "defocus"],
                          dynamic_axes={"pair": {2: "H", 3: "W"}}, opset_version=17, dynamo=False)
        fp32 = ort_session(path).run(None, {"pair": pair.numpy()})
        fp16 = ort_session(path, fp16=True).run(None, {"pair": pair.numpy()})
        results[name] = (fp32, fp16)
    (old32, old16), (new32, new16) = results["old"], results["new"]
    assert np.isfinite(old32[1]).all() and np.isnan(old16[1]).all() and np.isnan(old16[0][:, 1:]).all()
    assert np.isfinite(new16[0]).all() and np.isfinite(new16[1]).all()
    assert np.abs(new32[1] - old32[1]).max() < 1e-5  # same function in FP32
    err = np.abs(new16[1] - new32[1]).max()
    assert 1e-5 < err < 2e-2, err  # rounded, but only by FP16's precision


def test_fp16_verification_entry(exported, bundle):
    path, _ = exported
    report = verify_gd_onnx(bundle, path, atol=1e-3, rtol=5e-3, fp16=True)
    assert report["passed"] and report["rtol"] == 5e-3, report
    assert set(report["outputs"]) == {"alphas", "defocus"}
    assert 1e-6 < report["max_abs"] < 1e-2
    fp32 = verify_gd_onnx(bundle, path)
    assert fp32["max_abs"] < report["max_abs"] and "rtol" not in fp32
