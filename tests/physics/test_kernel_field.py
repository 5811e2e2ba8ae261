"""The kernel field (edgedp.physics.kernel_field) and its reader (edgedp.formats.kernel_grid)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edgedp.errors import InputError
from edgedp.formats import load_kernel_grid
from edgedp.physics import (
    KernelField,
    field_layer_kernels,
    kernel_centroid,
    kernel_disparity,
    mirror_kernel,
    recentre_pair,
    spread_ratio,
    uniform_field,
)
from edgedp.physics.kernels import dp_kernel_pair


def analytic_pair(radius: float, split: float, stretch: float, size: int, *, supersample: int = 8) -> torch.Tensor:
    """An asymmetric behind pair (2, size, size) float64: a disk of ``radius`` px cut by the
    vertical line ``x = split`` px; the left kernel is the part left of it stretched horizontally by
    ``stretch``, the right one the part right of it stretched by ``1 / stretch``.  Pixel-integrated
    by ``supersample``^2 samples per pixel."""
    n = size * supersample
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / supersample - size / 2
    y, x = u[:, None], u[None, :]
    out = []
    for scale, keep in ((stretch, lambda xs: xs < split), (1 / stretch, lambda xs: xs > split)):
        xs = x / scale
        inside = ((xs * xs + y * y) <= radius * radius) & keep(xs)
        k = inside.double().reshape(size, supersample, size, supersample).sum((1, 3))
        out.append(k / k.sum())
    return torch.stack(out)


def analytic_field(grid: tuple[int, int], radius: float, size: int) -> KernelField:
    """Per cell an :func:`analytic_pair` whose split line moves from -0.35 R to +0.35 R across the
    columns and whose stretch runs from 1.25 to 0.8 across them (rows: a smaller radius lower)."""
    pr, pc = grid
    pairs = torch.empty(pr, pc, 2, size, size, dtype=torch.float64)
    for i in range(pr):
        for j in range(pc):
            t = j / max(pc - 1, 1)
            rad = radius * (1.0 - 0.15 * i / max(pr - 1, 1))
            pairs[i, j] = analytic_pair(rad, (-0.35 + 0.7 * t) * rad, 1.25 - 0.45 * t, size)
    return KernelField(recentre_pair(pairs), "analytic")


def shifted(kernels: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    return torch.roll(kernels, shifts=(dy, dx), dims=(-2, -1))


def test_recentre_puts_centroid_at_centre_keeps_disparity_and_is_idempotent():
    field = analytic_field((2, 3), 5.0, 17)
    raw = torch.stack([shifted(field.pairs[0, 0], 2, -3), shifted(field.pairs[1, 2], -1, 2)])  # (2, 2, K, K)
    raw = raw * torch.tensor([3.0, 0.5], dtype=torch.float64)[:, None, None, None]  # unnormalized
    raw[0] = torch.roll(raw[0], 0)  # integer shifts first; a sub-pixel one next:
    raw[1] = 0.7 * raw[1] + 0.3 * shifted(raw[1], 0, 1)
    before = kernel_centroid(raw.mean(1) / raw.mean(1).sum((-1, -2), keepdim=True))
    assert float(before.abs().max()) > 1.0
    out = recentre_pair(raw)
    centre = kernel_centroid(out.mean(1))
    assert float(centre.abs().max()) < 1e-3
    assert torch.allclose(out.sum((-1, -2)), torch.ones(2, 2, dtype=torch.float64))
    # Disparity (a difference of centroids) is what the shift must not change.
    norm = raw / raw.sum((-1, -2), keepdim=True)
    assert torch.allclose(kernel_disparity(out.movedim(1, 0)), kernel_disparity(norm.movedim(1, 0)), atol=1e-9)
    again = recentre_pair(out)
    assert float((again - out).abs().max()) < 1e-6
    assert out.dtype == torch.float64


def test_uniform_field_symmetrized_mean_pair_and_spread_ratio():
    pair = dp_kernel_pair(4.0, "butterworth", dtype=torch.float64)
    field = uniform_field(pair, (2, 3))
    assert field.grid == (2, 3) and field.size == 9 and field.source == "butterworth"
    assert torch.allclose(field.disparity, torch.full((2, 3), float(kernel_disparity(pair)), dtype=torch.float64), atol=1e-9)
    assert torch.allclose(field.symmetrized().pairs, field.pairs, atol=1e-12)  # already mirror-symmetric
    assert torch.allclose(spread_ratio(field), torch.ones(2, 3, dtype=torch.float64), atol=1e-9)

    asym = analytic_field((2, 3), 5.0, 17)
    sym = asym.symmetrized()
    assert torch.allclose(sym.pairs[:, :, 1], mirror_kernel(sym.pairs[:, :, 0]))
    left_direct = (asym.pairs[:, :, 0] + asym.pairs[:, :, 1].flip(-1, -2)) / 2
    assert torch.allclose(sym.pairs[:, :, 0], left_direct)
    assert torch.allclose(asym.mean_pair(), asym.pairs.mean((0, 1)))
    # Direct reference of the spread ratio: horizontal std from the column marginals in numpy.
    p = asym.pairs.numpy()
    xs = np.arange(17) - 8

    def hstd(k):
        col = k.sum(0) / k.sum()
        m = (col * xs).sum()
        return np.sqrt((col * (xs - m) ** 2).sum())

    expected = np.array([[hstd(p[i, j, 0]) / hstd(p[i, j, 1]) for j in range(3)] for i in range(2)])
    assert np.allclose(spread_ratio(asym).numpy(), expected, atol=1e-9)
    ratio = spread_ratio(asym)
    assert float(ratio[0, 0]) < 0.85 and float(ratio[0, 2]) > 1.2  # the field varies as built


def test_field_layer_kernels_disparity_per_layer_delta_and_in_front_rotation():
    field = analytic_field((2, 3), 5.0, 17).to(dtype=torch.float32)
    radii = torch.tensor([-6.0, -3.0, 0.0, 1.5, 3.0, 6.0])
    pk = field_layer_kernels(field, radii, 0.6, 21)
    assert tuple(pk.shape) == (2, 3, 2, 6, 21, 21) and pk.dtype == torch.float32
    assert torch.allclose(pk.sum((-1, -2)), torch.ones(2, 3, 2, 6), atol=1e-5)
    assert float(pk.min()) >= 0
    disparity = kernel_disparity(pk.movedim(2, 0))  # (Pr, Pc, L)
    want = (0.6 * radii).expand(2, 3, 6)
    assert float((disparity - want).abs().max()) < 2e-3
    # In focus: a delta; in front: each view's kernel is its behind kernel rotated by 180 degrees,
    # which for an asymmetric pair is not the left/right swap.
    assert float(pk[:, :, :, 2, 10, 10].min()) == 1.0
    assert torch.allclose(pk[:, :, :, 0], mirror_kernel(pk[:, :, :, 5]))
    assert torch.allclose(pk[:, :, :, 1], mirror_kernel(pk[:, :, :, 4]))
    assert float((pk[:, :, :, 0] - pk[:, :, :, 5].flip(2)).abs().max()) > 1e-3
    # Resizing about the centre keeps every layer centred (what recentring is for).
    assert float(kernel_centroid(pk[:, :, :, [0, 1, 3, 4, 5]].mean(2)).abs().max()) < 2e-3
    # Size None (the smallest holding 98 % of every kernel) gives the asked disparities too.
    free = field_layer_kernels(field, radii, 0.6)
    assert free.shape[-1] % 2 == 1 and float((pk.sum((-1, -2)) - 1).abs().max()) < 1e-5
    assert float((kernel_disparity(free.movedim(2, 0)) - want).abs().max()) < 2e-3


def _save(folder, name, array):
    path = folder / name
    np.save(path, array)
    return path


def test_load_kernel_grid_accepts_both_layouts_and_recentres(tmp_path):
    field = analytic_field((2, 3), 4.0, 15)
    left = np.stack([np.roll(k, (1, -2), (0, 1)) for k in field.pairs[:, :, 0].reshape(6, 15, 15).numpy()])
    right = np.stack([np.roll(k, (1, -2), (0, 1)) for k in field.pairs[:, :, 1].reshape(6, 15, 15).numpy()])
    left[0, 0, 0] = -1e-7  # rounding: clipped
    flat = load_kernel_grid(_save(tmp_path, "l.npy", left), _save(tmp_path, "r.npy", right), (2, 3))
    grid = load_kernel_grid(_save(tmp_path, "l4.npy", left.reshape(2, 3, 15, 15)), _save(tmp_path, "r4.npy", right.reshape(2, 3, 15, 15)), (2, 3))
    assert flat.pairs.dtype == torch.float32 and flat.grid == (2, 3) and flat.source == "calibration"
    assert torch.allclose(flat.pairs, grid.pairs)
    assert float(kernel_centroid(flat.pairs.mean(2)).abs().max()) < 1e-3
    assert torch.allclose(flat.pairs.double(), field.pairs, atol=1e-5)


def test_load_kernel_grid_errors(tmp_path):
    pair = dp_kernel_pair(3.0).numpy()
    good_l, good_r = np.stack([pair[0]] * 6), np.stack([pair[1]] * 6)
    gl, gr = _save(tmp_path, "gl.npy", good_l), _save(tmp_path, "gr.npy", good_r)
    cases = {
        "no such file": (tmp_path / "missing.npy", gr, (2, 3)),
        "cannot read": (_save(tmp_path, "junk.txt", good_l).with_suffix(".txt"), gr, (2, 3)),
        "differ in shape": (gl, _save(tmp_path, "r8.npy", np.stack([pair[1]] * 8)), (2, 3)) ,
        "needs 8": (gl, gr, (2, 4)),
        "odd size": (_save(tmp_path, "even_l.npy", np.ones((6, 6, 6))), _save(tmp_path, "even_r.npy", np.ones((6, 6, 6))), (2, 3)),
        "NaN": (_save(tmp_path, "nan.npy", np.where(good_l > 0.05, np.nan, good_l)), gr, (2, 3)),
        "negative": (_save(tmp_path, "neg.npy", good_l - 0.01), gr, (2, 3)),
        "no mass": (_save(tmp_path, "zero.npy", np.concatenate([good_l[:5], np.zeros((1, 7, 7))])), gr, (2, 3)),
        "swapped": (gr, gl, (2, 3)),
    }
    (tmp_path / "junk.txt").write_bytes(b"not numpy")
    cases["cannot read"] = (tmp_path / "junk.txt", gr, (2, 3))
    for what, (lp, rp, grid) in cases.items():
        with pytest.raises(InputError) as info:
            load_kernel_grid(lp, rp, grid)
        text = str(info.value)
        assert "\n" not in text, what
        key = {"odd size": "odd size", "needs 8": "needs 8", "swapped": "swapped"}.get(what, what)
        assert key in text, (what, text)


# ---------------------------------------------------------------------------------------------
# the fit with a field
SIZE, RADIUS = (97, 131), 4


def render_field_scene(field: KernelField, size, radius: int, depths, *, seed: int, noise: float, noise_seed: int,
                       kernel_size: int | None = None) -> dict:
    """A behind scene rendered patchwise with a known kernel field: a dead-leaves image
    (``seed``), layered defocus of the given ``depths`` (px), hat weights over the fit's layers
    0..``radius``, the field's layer kernels at the default fit's disparity per radius, Gaussian
    noise of std ``noise``.  Returns views, sharp, layer_kernels, radii, dpr."""
    from edgedp.fit import FitConfig
    from edgedp.fit.pipeline import disparity_per_radius
    from edgedp.physics import behind_radii, render_dual_pixel_patchwise
    from edgedp.synth import dead_leaves, layered_defocus

    h, w = size
    sharp = dead_leaves(size, seed=seed)
    defocus = layered_defocus(size, list(depths), seed=seed)
    radii = behind_radii(radius, radius + 1)
    weights = (1 - (defocus[None] - radii[:, None, None]).abs()).clamp(min=0)
    weights = weights / weights.sum(0, keepdim=True)
    dpr = disparity_per_radius("butterworth", FitConfig().butterworth)
    pk = field_layer_kernels(field, radii, dpr, kernel_size)
    views = render_dual_pixel_patchwise(sharp.expand(1, radius + 1, h, w).contiguous(), weights[None], pk)[0]
    views = views + noise * torch.randn(views.shape, generator=torch.Generator().manual_seed(noise_seed))
    return {"views": views, "sharp": sharp, "layer_kernels": pk, "radii": radii, "dpr": dpr}


@pytest.fixture(scope="module")
def field_scene():
    """97 x 131 behind scene rendered patchwise with a known asymmetric analytic field over a 2 x 3
    grid (layered defocus 0.5 .. 4 px, hat weights over the fit's layers 0..4), noise std 0.005."""
    field = analytic_field((2, 3), 6.0, 17).to(dtype=torch.float32)
    scene = render_field_scene(field, SIZE, RADIUS, [3.5, 0.5, 2.0, 4.0], seed=3, noise=0.005, noise_seed=0)
    return {"views": scene["views"], "sharp": scene["sharp"], "field": field, "layer_kernels": scene["layer_kernels"]}


@pytest.fixture()
def one_thread(_deterministic_threads):  # after conftest's thread setting
    # Three small fits: a second thread does not help, and on a loaded machine it made them 7x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fit_with_the_true_field_beats_the_symmetric_fit(field_scene, one_thread):
    """Measured (torch 2.13 CPU, one thread): blurry input 19.66 dB, default parametric fit 21.88,
    the true field 22.80 (+0.91 dB), the field symmetrized per cell 22.71."""
    from edgedp.fit import FitConfig, fit_scene
    from edgedp.metrics import psnr

    views, sharp, field = field_scene["views"], field_scene["sharp"], field_scene["field"]
    config = FitConfig(max_radius=float(RADIUS), stage2_iterations=60, patches=(2, 3))
    # The parametric, mirror-symmetric fit (no estimated field: that is test_kernel_estimation's).
    plain = fit_scene(views[0:1], views[1:2], dataclasses.replace(config, kernel_estimation=None))
    true = fit_scene(views[0:1], views[1:2], config, kernel_field=field)
    sym = fit_scene(views[0:1], views[1:2], config, kernel_field=field.symmetrized())
    p_plain, p_true, p_sym = (psnr(r.allinfocus[0], sharp) for r in (plain, true, sym))
    assert p_true > p_plain + 0.6, (p_plain, p_true)
    assert p_true > p_sym, (p_sym, p_true)  # the asymmetry itself helps
    # What the result carries: the field's layer kernels, their mean, the grid and the source.
    assert torch.allclose(true.patch_kernels, field_scene["layer_kernels"], atol=1e-6)
    assert torch.allclose(true.kernels, true.patch_kernels.mean((0, 1)))
    assert true.config.patches == (2, 3) and plain.kernel_field is None
    assert true.kernel_field["source"] == "analytic" and true.kernel_field["grid"] == [2, 3]


def test_fit_with_a_field_refuses_stage3_and_tiling(field_scene):
    from edgedp.fit import FitConfig, TilingConfig, fit_scene, fit_within_budget

    views, field = field_scene["views"], field_scene["field"]
    with pytest.raises(InputError, match="--iterations N,0"):
        fit_scene(views[0:1], views[1:2], FitConfig(max_radius=4.0, stage3_iterations=5), kernel_field=field)
    with pytest.raises(InputError, match="--max-memory"):
        fit_within_budget(views[0:1], views[1:2], FitConfig(max_radius=4.0, stage2_iterations=1), TilingConfig(tile=48),
                          kernel_field=field)


# ---------------------------------------------------------------------------------------------
# the command line
def _write_pair(folder, views):
    import cv2

    paths = []
    for name, view in zip(("left", "right"), views):
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), (view.clamp(0, 1).numpy() * 65535).round().astype(np.uint16))
        paths.append(path)
    return paths


def _write_field(folder, field: KernelField, layout: str = "flat"):
    pairs = field.pairs.numpy()
    pr, pc, _, k, _ = pairs.shape
    out = []
    for v, name in ((0, "kl.npy"), (1, "kr.npy")):
        a = pairs[:, :, v]
        out.append(_save(folder, name, a.reshape(pr * pc, k, k) if layout == "flat" else a))
    return out


def test_cli_fit_with_kernels_says_so_and_records_the_field(tmp_path, field_scene, one_thread):
    import json

    from typer.testing import CliRunner

    from edgedp.cli import app

    left, right = _write_pair(tmp_path, field_scene["views"])
    kl, kr = _write_field(tmp_path, field_scene["field"], "grid")
    result = CliRunner().invoke(app, ["fit", str(left), str(right), "-o", str(tmp_path / "out"), "--preset", "fast",
                                      "--iterations", "10,0", "--max-radius", "4", "--patches", "2x3",
                                      "--kernels", str(kl), str(kr)])
    assert result.exit_code == 0, result.output
    assert "kernels  field 2x3 from calibration (recentred)" in result.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["kernel_field"]["grid"] == [2, 3] and report["kernel_field"]["from"] == "--kernels"
    assert report["settings"]["kernels"] == [str(kl), str(kr)]
    scene = json.loads((tmp_path / "out" / "scene" / "scene.json").read_text())
    assert scene["kernel_field"]["source"] == "calibration"
    assert scene["arrays"]["patch_kernels"]["shape"][:3] == [2, 3, 2]
    # The bundle exports with the field's per-cell kernels and passes its own numerical verification.
    exported = CliRunner().invoke(app, ["export", str(tmp_path / "out"), "-o", str(tmp_path / "onnx")])
    assert exported.exit_code == 0, exported.output
    side = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert side["kernel_model"].endswith("+patches")
    assert side["verification"]["render"]["passed"] and side["verification"]["refocus"]["passed"], side["verification"]


def test_cli_kernels_errors_are_one_line(tmp_path, field_scene):
    from typer.testing import CliRunner

    from edgedp.cli import app

    left, right = _write_pair(tmp_path, field_scene["views"])
    kl, kr = _write_field(tmp_path, field_scene["field"])
    cases = [
        (["--patches", "2x4", "--kernels", kl, kr], "needs 8"),
        (["--kernels", kl, kr], "6x8"),  # the default grid does not match 6 kernels
        (["--patches", "2x3", "--kernels", tmp_path / "nope.npy", kr], "no such file"),
        (["--patches", "2x3", "--kernels", kr, kl], "swapped"),
        (["--patches", "2x3", "--iterations", "5,5", "--kernels", kl, kr], "--iterations N,0"),
    ]
    for extra, word in cases:
        for command in ("fit", "batch"):
            args = ([command, left, right] if command == "fit" else [command, f"{left},{right}"]) + \
                ["-o", tmp_path / f"out_{command}"] + extra
            result = CliRunner().invoke(app, [str(a) for a in args])
            assert result.exit_code == 2, (command, extra, result.output)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], (command, word, result.stderr)


# ---------------------------------------------------------------------------------------------
# device profile
def test_profile_round_trip_with_a_field_and_which_field_a_fit_uses(tmp_path, field_scene):
    import zipfile

    from edgedp.fit import FitConfig
    from edgedp.formats.profile import DeviceProfile, load_profile, save_profile
    from edgedp.physics import ButterworthParams
    from edgedp.run.capture import CaptureOptions, capture_kernel_field

    field = field_scene["field"]
    base = DeviceProfile("phone", 97, 131, "butterworth", ButterworthParams(), 1.0, 5, 0.25, 2,
                         {"w": torch.ones(2, 3)})
    with_field = DeviceProfile(**{**base.__dict__, "kernel_field": field})
    save_profile(with_field, tmp_path / "f.profile")
    save_profile(base, tmp_path / "plain.profile")
    loaded = load_profile(tmp_path / "f.profile")
    assert loaded.kernel_field is not None and loaded.kernel_field.source == "analytic"
    assert torch.equal(loaded.kernel_field.pairs, field.pairs) and loaded.kernel_field.pairs.dtype == torch.float32
    assert "kernel_field/pairs.npy" in zipfile.ZipFile(tmp_path / "f.profile").namelist()
    assert load_profile(tmp_path / "plain.profile").kernel_field is None  # no field: today's behaviour

    config = FitConfig(patches=(2, 3))
    assert capture_kernel_field(CaptureOptions(), config, loaded) is loaded.kernel_field
    assert capture_kernel_field(CaptureOptions(), config, load_profile(tmp_path / "plain.profile")) is None
    kl, kr = _write_field(tmp_path, field.symmetrized())
    given = capture_kernel_field(CaptureOptions(kernels=(kl, kr)), config, loaded)  # an explicit --kernels wins
    assert given.source == "calibration" and torch.allclose(given.pairs, field.symmetrized().pairs, atol=1e-5)

    # A damaged member is one line.
    import numpy as _np

    arrays = dict(_np.load(tmp_path / "f.profile"))
    arrays["kernel_field/pairs"] = arrays["kernel_field/pairs"][:, :, :, :4]
    with open(tmp_path / "bad.profile", "wb") as fh:
        _np.savez(fh, **arrays)
    with pytest.raises(InputError, match="kernel field"):
        load_profile(tmp_path / "bad.profile")
