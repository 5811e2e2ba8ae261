"""``edgedp fit``: options, outputs, refusals and one-line errors.

Most tests replace :func:`edgedp.fit.pipeline.fit_scene` (as the CLI calls it) by a fake that returns a
small consistent FitResult built from the input: they test only the CLI plumbing (option ->
FitConfig mapping, reading, output files, report, errors), not the fit.  The end-to-end tests at
the bottom run the real fit (slow-marked); the quality tests of the fit are the fit's own.
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import edgedp.fit.pipeline
from edgedp.formats import load_bundle
from edgedp.cli import app
from edgedp.fit import presets
from edgedp.errors import InputError
from edgedp.fit import FitConfig, FitResult, StageReport
from edgedp.physics import behind_radii, kernel_pyramid
from edgedp.physics import over_weights

runner = CliRunner()
OUTPUTS = ("allinfocus.png", "defocus.npy", "defocus.png", "preview.png", "scene/scene.npz", "scene/scene.json", "report.json")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    # Progress lines of a fit that already started may precede the error; it is the last line.
    lines = result.stderr.strip().splitlines()
    err = lines[-1]
    assert err.startswith("error: "), result.stderr
    assert all(line.startswith("stage ") for line in lines[:-1]), f"error message spans lines: {result.stderr!r}"
    assert "Traceback" not in result.output
    for word in words:
        assert word.lower() in err.lower(), (word, err)


class FakeFit:
    """Stands in for fit_scene: records its arguments, reports progress, returns a FitResult
    whose all-in-focus image is the input mean and whose defocus map is a horizontal ramp."""

    LAYERS = 4

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, left, right, config=FitConfig(), *, kernel_field=None, field_prior=None, gd_init=None, progress=None) -> FitResult:
        self.calls.append({"left": left, "right": right, "config": config, "gd_init": gd_init, "kernel_field": kernel_field, "field_prior": field_prior})
        net = torch.nn.Conv2d(2, self.LAYERS, 3)
        if gd_init is not None:
            for key, value in net.state_dict().items():
                if key not in gd_init or gd_init[key].shape != value.shape:
                    # The real fit's wording (edgedp.fit.stage2.load_gd_state).
                    raise InputError(f"warm start G_D parameter {key!r} has shape {tuple(gd_init[key].shape)}, expected {tuple(value.shape)}")
            net.load_state_dict(gd_init)
        c, h, w = left.shape
        layers = self.LAYERS
        radii = behind_radii(layers - 1, layers)
        t = torch.linspace(0, layers - 1, w).expand(h, w)
        alphas = torch.stack([(t >= i).float() for i in range(layers)])  # ramp of hard layers
        weights = over_weights(alphas)
        latent = ((left + right) / 2)[:, None].expand(c, layers, h, w).clone()
        if progress is not None:
            progress("stage 1", 1, 1, None)
            for step in range(1, 5):
                progress("stage 2", step, 4, 1e-3 / step)
        patch_kernels = None
        if config.stage3_iterations > 0:
            patch_kernels = kernel_pyramid(radii).expand(*config.patches, 2, layers, 7, 7).clone()
        return FitResult(
            allinfocus=(left + right) / 2,
            defocus=(weights * radii[:, None, None]).sum(0),
            weights=weights,
            alphas=alphas,
            latent=latent,
            radii=radii,
            kernels=kernel_pyramid(radii),
            patch_kernels=patch_kernels,
            gd_state=net.state_dict(),
            gd_config={"layers": layers, "width": 0.5},
            focus="behind" if config.focus == "auto" else config.focus,
            config=dataclasses.replace(config, max_radius=float(layers - 1), layers=layers),
            stages=[StageReport("stage 1 latent map", 0.5, 1, None), StageReport("stage 2 defocus map", 2.0, config.stage2_iterations, 2.5e-4, [1e-3, 2.5e-4])],
            disparity={"low": 0.2, "median": 1.0, "high": 2.0, "side": "behind"},
        )


@pytest.fixture
def fake(monkeypatch) -> FakeFit:
    fake = FakeFit()
    monkeypatch.setattr(edgedp.fit.pipeline, "fit_scene", fake)
    return fake


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A 16-bit gray DP pair, 37 x 53."""
    folder = tmp_path_factory.mktemp("pair")
    g = np.random.default_rng(0)
    for name in ("left", "right"):
        cv2.imwrite(str(folder / f"{name}.png"), (g.random((37, 53)) * 50000 + 5000).astype(np.uint16))
    return folder / "left.png", folder / "right.png"


def test_help_has_examples():
    result = run("fit", "--help")
    assert result.exit_code == 0
    assert "Examples" in result.stdout and "--warm-start" in result.stdout and "luminance" in result.stdout


def test_writes_every_output(fake, pair, tmp_path):
    out = tmp_path / "out"
    result = run("fit", *pair, "-o", out, "--preset", "fast")
    assert result.exit_code == 0, result.output
    for name in OUTPUTS:
        assert (out / name).is_file(), name

    left = cv2.imread(str(pair[0]), cv2.IMREAD_UNCHANGED).astype(np.float64) / 65535
    right = cv2.imread(str(pair[1]), cv2.IMREAD_UNCHANGED).astype(np.float64) / 65535
    allinfocus = cv2.imread(str(out / "allinfocus.png"), cv2.IMREAD_UNCHANGED)
    assert allinfocus.dtype == np.uint16 and allinfocus.shape == (37, 53)
    # 16-bit linear on the normalized input's scale: value = x * 65535.
    np.testing.assert_allclose(allinfocus / 65535, (left + right) / 2, atol=1 / 65535)

    defocus = np.load(out / "defocus.npy")
    assert defocus.dtype == np.float32 and defocus.shape == (37, 53)
    assert defocus[0, 0] == 0 and defocus[0, -1] == 3  # the fake's ramp, in px
    figure = cv2.imread(str(out / "defocus.png"), cv2.IMREAD_UNCHANGED)
    assert figure.dtype == np.uint8 and figure.shape[2] == 3 and figure.shape[1] > 53
    preview = cv2.imread(str(out / "preview.png"), cv2.IMREAD_UNCHANGED)
    assert preview.dtype == np.uint8 and preview.shape == (37, 3 * 53 + 4, 3)

    bundle = load_bundle(out / "scene")
    assert bundle.latent.shape == (1, 4, 37, 53) and bundle.meta["input"]["size_hw"] == [37, 53]
    assert torch.equal(bundle.defocus, torch.from_numpy(defocus))

    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["preset"] == "fast"
    assert report["config_requested"]["stage2_iterations"] == presets()["fast"].stage2_iterations
    assert report["config"]["layers"] == 4
    assert [s["name"] for s in report["stages"]] == ["stage 1 latent map", "stage 2 defocus map"]
    assert report["stages"][1]["final_loss"] == 2.5e-4 and report["stages"][1]["seconds"] == 2.0
    assert report["focus"] == {"requested": "auto", "decided": "behind"}
    assert report["peak_rss_bytes"] > 10 * 2**20
    assert report["seconds"]["total"] >= report["seconds"]["fit"] > 0
    assert report["disparity"]["side"] == "behind"
    assert report["input"]["kind"] == "gray" and report["input"]["bit_depth"] == 16
    assert set(report["versions"]) >= {"edgedp", "torch", "numpy"}

    # stdout: the summary; stderr: progress.
    assert "stage 2  defocus map" in result.stdout and "2.50e-4" in result.stdout
    assert "auto -> behind" in result.stdout
    assert "stage 2: 4/4 it" in result.stderr and "stage 2" not in result.stdout.split("focus")[1]


def test_refuses_to_overwrite_before_fitting(fake, pair, tmp_path):
    out = tmp_path / "out"
    assert run("fit", *pair, "-o", out).exit_code == 0
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    fake.calls.clear()
    result = run("fit", *pair, "-o", out, "--seed", 3)
    assert_one_line_error(result, "exists", "--overwrite")
    assert fake.calls == []  # refused before the fit started
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before
    result = run("fit", *pair, "-o", out, "--seed", 3, "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["config"]["seed"] == 3


def test_refuses_when_only_the_bundle_exists(fake, pair, tmp_path):
    out = tmp_path / "out"
    assert run("fit", *pair, "-o", out).exit_code == 0
    for name in OUTPUTS:
        if not name.startswith("scene/"):
            (out / name).unlink()
    assert_one_line_error(run("fit", *pair, "-o", out), "scene.npz", "exists")


def test_flags_map_to_the_fit_config(fake, pair, tmp_path):
    result = run(
        "fit", *pair, "-o", tmp_path, "--preset", "fast", "--iterations", "50,7", "--layers", 5, "--max-kernel", 11,
        "--patches", "2x3", "--focus", "both", "--kernel", "disk", "--seed", 4,
    )
    assert result.exit_code == 0, result.output
    config = fake.calls[0]["config"]
    assert config == dataclasses.replace(
        presets()["fast"], stage2_iterations=50, stage3_iterations=7, layers=5, max_radius=5.0, patches=(2, 3),
        focus="both", kernel_model="disk", seed=4, device="cpu",
    )
    assert "focus    both (as requested" in result.stdout
    assert load_bundle(tmp_path / "scene").patch_kernels.shape[:3] == (2, 3, 2)


def test_iterations_without_stage3_keeps_the_preset(fake, pair, tmp_path):
    assert run("fit", *pair, "-o", tmp_path, "--preset", "best", "--iterations", 9, "--max-radius", 2.5).exit_code == 0
    config = fake.calls[0]["config"]
    assert (config.stage2_iterations, config.stage3_iterations) == (9, presets()["best"].stage3_iterations)
    assert config.max_radius == 2.5


@pytest.mark.parametrize(
    "flags, words",
    [
        (("--patches", "6by8"), ("--patches", "6by8")),
        (("--patches", "0x8"), ("--patches",)),
        (("--iterations", "many"), ("--iterations", "many")),
        (("--iterations", "-3,5"), ("--iterations",)),
        (("--iterations", "10,20,30"), ("--iterations",)),
        (("--max-kernel", "34"), ("--max-kernel", "odd")),
        (("--max-kernel", "11", "--max-radius", "5"), ("--max-kernel", "--max-radius")),
        (("--max-radius", "-1"), ("--max-radius",)),
        (("--layers", "1"), ("--layers",)),
        (("--channel", "green"), ("--channel", "one channel")),
        (("--channel", "purple"), ("--channel", "purple")),
        (("--crop", "big"), ("big",)),
    ],
)
def test_bad_options_fail_with_one_line(fake, pair, tmp_path, flags, words):
    result = run("fit", *pair, "-o", tmp_path / "o", *flags)
    assert_one_line_error(result, *words)
    assert fake.calls == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable(fake, pair, tmp_path):
    assert_one_line_error(run("fit", *pair, "-o", tmp_path, "--device", "cuda"), "--device cuda", "not available")
    assert fake.calls == []


def test_output_folder_is_a_file(fake, pair, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert_one_line_error(run("fit", *pair, "-o", blocker), "file.txt")
    assert fake.calls == []


def test_missing_input(fake, pair, tmp_path):
    assert_one_line_error(run("fit", tmp_path / "nope.png", pair[1], "-o", tmp_path / "o"), "nope.png")


def test_warm_start_from_a_bundle(fake, pair, tmp_path):
    assert run("fit", *pair, "-o", tmp_path / "a").exit_code == 0
    saved = load_bundle(tmp_path / "a" / "scene").gd_state
    for source in (tmp_path / "a" / "scene", tmp_path / "a" / "scene" / "scene.npz"):
        fake.calls.clear()
        result = run("fit", *pair, "-o", tmp_path / "b", "--warm-start", source, "--overwrite")
        assert result.exit_code == 0, result.output
        gd_init = fake.calls[0]["gd_init"]
        assert set(gd_init) == set(saved) and all(torch.equal(gd_init[k], saved[k]) for k in saved)


def test_warm_start_mismatch(fake, pair, tmp_path):
    torch.save(torch.nn.Conv2d(2, 9, 3).state_dict(), tmp_path / "gd.pt")  # 9 layers, the fit has 4
    result = run("fit", *pair, "-o", tmp_path / "o", "--warm-start", tmp_path / "gd.pt")
    assert_one_line_error(result, "--warm-start", "gd.pt", "shape")
    assert not (tmp_path / "o" / "report.json").exists()


def test_warm_start_unreadable(fake, pair, tmp_path):
    (tmp_path / "gd.pt").write_bytes(b"not a state dict")
    assert_one_line_error(run("fit", *pair, "-o", tmp_path / "o", "--warm-start", tmp_path / "gd.pt"), "--warm-start", "gd.pt")
    assert_one_line_error(run("fit", *pair, "-o", tmp_path / "o", "--warm-start", tmp_path / "none"), "--warm-start", "none")
    assert fake.calls == []


def test_rgb_input(fake, tmp_path):
    g = np.random.default_rng(1)
    for name in ("left", "right"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), (g.random((37, 53, 3)) * 60000).astype(np.uint16))
    result = run("fit", tmp_path / "left.png", tmp_path / "right.png", "-o", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert fake.calls[0]["left"].shape == (3, 37, 53)
    allinfocus = cv2.imread(str(tmp_path / "o" / "allinfocus.png"), cv2.IMREAD_UNCHANGED)
    assert allinfocus.shape == (37, 53, 3) and allinfocus.dtype == np.uint16
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["input"]["fit_channel"] == "luminance"
    assert load_bundle(tmp_path / "o" / "scene").allinfocus.shape == (3, 37, 53)
    if "channel" not in {f.name for f in dataclasses.fields(FitConfig)}:
        assert_one_line_error(run("fit", tmp_path / "left.png", tmp_path / "right.png", "-o", tmp_path / "p", "--channel", "green"), "--channel")


def test_the_benchmark_invocation(fake, tmp_path):
    """Raw 14-bit data in 16-bit PNGs, black level 1024, flat field, centred crop, --preset fast."""
    g = np.random.default_rng(2)
    h0, w0 = 45, 61
    scene = g.random((h0, w0))
    vignette = np.linspace(1.0, 0.8, w0)[None, :]
    raw = lambda x: np.rint(1024 + np.clip(x, 0, 1) * 15000).astype(np.uint16)  # noqa: E731
    files = {
        "l.png": raw(0.5 * scene), "r.png": raw(0.5 * scene * vignette),
        "wl.png": raw(np.full((h0, w0), 0.6) + 0.01 * g.random((h0, w0))),
        "wr.png": raw(0.6 * vignette + 0.01 * g.random((h0, w0))),
    }
    for name, image in files.items():
        cv2.imwrite(str(tmp_path / name), image)
    out = tmp_path / "out"
    args = ("fit", tmp_path / "l.png", tmp_path / "r.png", "-o", out, "--black-level", "1024", "--white-level", "16383",
            "--flat-field", tmp_path / "wl.png", tmp_path / "wr.png", "--crop", "37x53", "--preset", "fast", "--overwrite")
    result = run(*args)
    assert result.exit_code == 0, result.output
    left = fake.calls[0]["left"]
    assert left.shape == (1, 37, 53)
    y0, x0 = (h0 - 37) // 2, (w0 - 53) // 2
    expected = (files["l.png"][y0 : y0 + 37, x0 : x0 + 53].astype(np.float64) - 1024) / 16383
    np.testing.assert_allclose(left[0].numpy(), expected, rtol=1e-6, atol=1e-7)
    assert fake.calls[0]["config"].stage2_iterations == presets()["fast"].stage2_iterations
    info = json.loads((out / "report.json").read_text())["input"]
    assert info["black_level"] == 1024 and info["white_level"] == 16383 and info["crop_hw"] == [37, 53]
    assert info["crop_offset_yx"] == [y0, x0] and info["flat_field"][0].endswith("wl.png") and info["kind"] == "raw"
    assert run(*args).exit_code == 0  # --overwrite: a second run replaces the outputs


# ---------------------------------------------------------------------------------------------
# The real fit, end to end (seconds each on 2 cores).


@pytest.fixture(scope="module")
def synth_scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    result = run("synth", "-o", out, "--size", "97x131", "--seed", 2, "--max-radius", 5)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_real_fit_end_to_end(synth_scene, tmp_path):
    out = tmp_path / "out"
    result = run("fit", synth_scene / "left.png", synth_scene / "right.png", "-o", out, "--preset", "fast", "--iterations", 20)
    assert result.exit_code == 0, result.output
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    defocus = np.load(out / "defocus.npy")
    assert defocus.shape == (97, 131) and defocus.dtype == np.float32 and np.isfinite(defocus).all()
    allinfocus = cv2.imread(str(out / "allinfocus.png"), cv2.IMREAD_UNCHANGED)
    assert allinfocus.shape == (97, 131) and allinfocus.dtype == np.uint16
    report = json.loads((out / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages)[0] == "kernel field estimation"  # the default estimates the kernel field first
    assert stages["stage 2 defocus map"]["iterations"] == 20 and report["focus"]["decided"] == "behind"
    bundle = load_bundle(out / "scene")
    torch.testing.assert_close(bundle.weights.sum(0), torch.ones(97, 131), atol=1e-5, rtol=0)
    # The bundle stores the weights in float16 (relative rounding 2^-11, then renormalized) and the
    # defocus map as fitted in float32: they agree to the weights' rounding times the radii.
    bound = 2.0**-10 * float(bundle.radii.abs().max()) + 1e-5
    torch.testing.assert_close(bundle.defocus, (bundle.weights * bundle.radii[:, None, None]).sum(0), atol=bound, rtol=0)

    # Warm start from that bundle, then from one with another layer count (one-line error).
    again = run("fit", synth_scene / "left.png", synth_scene / "right.png", "-o", tmp_path / "again", "--preset", "fast",
                "--iterations", 5, "--warm-start", out / "scene")
    assert again.exit_code == 0, again.output
    layers = bundle.radii.numel()
    bad = run("fit", synth_scene / "left.png", synth_scene / "right.png", "-o", tmp_path / "bad", "--preset", "fast",
              "--iterations", 5, "--layers", layers + 2, "--warm-start", out / "scene")
    assert_one_line_error(bad, "--warm-start", "shape")


def test_stage_lines_name_unnumbered_steps_by_their_own_name():
    from edgedp.cli.output import stage_line
    from edgedp.fit import StageReport

    assert stage_line(0, StageReport("kernel field estimation", 11.9, 15, None)).startswith("kernel   field estimation")
    assert stage_line(1, StageReport("stage 1 latent map", 1.0, 1, None)).startswith("stage 1  latent map")
