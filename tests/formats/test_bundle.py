"""The scene bundle: save -> load round trip, and one-line InputErrors for broken bundles."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import pytest
import torch

from edgedp.formats.bundle import (
    FORMAT_VERSION,
    fit_config_from_dict,
    load_bundle,
    read_gd_state,
    save_bundle,
)
from edgedp.errors import InputError, OutputError
from edgedp.fit import FitConfig, FitResult, StageReport, alphas_from_weights
from edgedp.physics import ButterworthParams, behind_radii, kernel_pyramid
from edgedp.physics import over_weights


def fake_result(
    channels: int = 1, h: int = 37, w: int = 53, layers: int = 4, patches: tuple[int, int] | None = (2, 3), seed: int = 0
) -> FitResult:
    """A small, self-consistent FitResult (random alphas, real kernels) without running a fit."""
    g = torch.Generator().manual_seed(seed)
    radii = behind_radii(layers - 1, layers)
    kernels = kernel_pyramid(radii)  # (2, L, K, K)
    alphas = torch.rand(layers, h, w, generator=g)
    alphas[0] = 1
    weights = over_weights(alphas)
    latent = torch.rand(channels, layers, h, w, generator=g)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, layers, 1))
    patch_kernels = None
    if patches is not None:
        patch_kernels = kernels.expand(*patches, *kernels.shape).clone()
        patch_kernels[0, 0, 0, 1] = torch.flip(patch_kernels[0, 0, 0, 1], dims=(-1,))
    config = FitConfig(
        focus="front", max_radius=float(radii.max()), layers=layers, butterworth=ButterworthParams(order=6.0),
        stage2_iterations=7, stage3_iterations=3 if patches else 0, patches=patches or (6, 8), latent_reg=0.01, seed=seed,
    )
    return FitResult(
        allinfocus=(latent * weights).sum(1),
        defocus=(weights * radii[:, None, None]).sum(0),
        weights=weights,
        alphas=alphas,
        latent=latent,
        radii=radii,
        kernels=kernels,
        patch_kernels=patch_kernels,
        gd_state={k: v.clone() for k, v in net.state_dict().items()},
        gd_config={"layers": layers, "width": 0.5, "in_channels": 2},
        focus="front",
        config=config,
        stages=[
            StageReport("stage 1 latent map", 0.25, 1, None),
            StageReport("stage 2 defocus map", 1.5, 7, 1.25e-4, [3e-3, 1e-3, 1.25e-4]),
        ],
        disparity={"low": 0.1, "median": 1.2, "high": 2.5, "side": "behind"},
    )


@pytest.fixture
def saved(tmp_path):
    result = fake_result(channels=3)
    folder = save_bundle(result, tmp_path / "scene", input_info={"left": "l.png", "black_level": 1024.0, "crop_hw": [37, 53]})
    return result, folder


def test_round_trip(saved):
    """Exact for the float32 arrays; the latent map and the weights come back within float16
    rounding (relative 2^-11), the weights summing to 1 again and the alphas derived from them."""
    result, folder = saved
    bundle = load_bundle(folder)
    for name in ("radii", "kernels", "patch_kernels", "defocus", "allinfocus"):
        got, want = getattr(bundle, name), getattr(result, name)
        assert got.dtype == torch.float32, name
        assert torch.equal(got, want.float()), name
    torch.testing.assert_close(bundle.latent, result.latent, rtol=2**-11, atol=0)
    torch.testing.assert_close(bundle.weights, result.weights, rtol=2**-10, atol=1e-7)
    torch.testing.assert_close(bundle.weights.sum(0), torch.ones(37, 53), rtol=0, atol=1e-6)
    assert bundle.latent.dtype == bundle.weights.dtype == bundle.alphas.dtype == torch.float32
    assert torch.equal(bundle.alphas, alphas_from_weights(bundle.weights))
    torch.testing.assert_close(over_weights(bundle.alphas), bundle.weights, rtol=0, atol=1e-5)
    assert list(bundle.gd_state) == list(result.gd_state)
    for key, value in result.gd_state.items():
        assert bundle.gd_state[key].dtype == value.dtype, key  # the BatchNorm counter stays int64
        assert torch.equal(bundle.gd_state[key], value), key
    assert bundle.config == result.config
    assert bundle.gd_config == result.gd_config
    assert bundle.focus == "behind"  # the result says "front", the old name of behind
    assert bundle.stages == result.stages
    meta = bundle.meta
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["shapes"] == {"channels": 3, "layers": 4, "height": 37, "width": 53, "kernel_size": 7, "patches": [2, 3]}
    assert meta["input"]["black_level"] == 1024.0
    assert meta["disparity"]["side"] == "behind"
    assert "true convolution" in meta["conventions"]["blur"]
    assert set(meta["versions"]) >= {"edgedp", "torch", "numpy"}


def test_npz_is_plain_numpy(saved):
    """The device side reads it without PyTorch: plain arrays (latent and weights float16, the
    rest float32), no pickles, no alphas (derived)."""
    _, folder = saved
    with np.load(folder / "scene.npz", allow_pickle=False) as npz:
        assert npz["latent"].shape == (3, 4, 37, 53) and npz["latent"].dtype == np.float16
        assert npz["weights"].dtype == np.float16 and npz["defocus"].dtype == np.float32
        assert "alphas" not in npz.files
        assert npz["patch_kernels"].shape == (2, 3, 2, 4, 7, 7)
        assert str(npz["format"]) == "edgedp-scene"
        assert any(k.startswith("gd/") for k in npz.files)
        np.testing.assert_allclose(npz["kernels"].sum((-1, -2)), 1.0, atol=1e-5)


def test_version_1_bundles_still_read(saved):
    """A format-1 bundle (float32 latent / weights, stored alphas) reads as it was written."""
    result, folder = saved
    with np.load(folder / "scene.npz") as npz:
        entries = {k: npz[k] for k in npz.files}
    entries.update(format_version=np.array(1, dtype=np.int32), latent=result.latent.numpy(),
                   weights=result.weights.numpy(), alphas=result.alphas.numpy())
    np.savez(folder / "scene.npz", **entries)
    meta = json.loads((folder / "scene.json").read_text())
    meta["format_version"] = 1
    (folder / "scene.json").write_text(json.dumps(meta))
    bundle = load_bundle(folder)
    for name in ("latent", "weights", "alphas"):
        assert torch.equal(getattr(bundle, name), getattr(result, name)), name


def test_disk_arrays_stream_into_the_bundle(tmp_path):
    """A tiled fit's on-disk (float16) latent and weights are written as they are."""
    from edgedp.io import DiskArray

    result = fake_result(channels=2, patches=None)
    disk = {}
    for name in ("latent", "weights", "alphas"):
        value = getattr(result, name).numpy()
        disk[name] = DiskArray(tmp_path / f"{name}.npy", value.shape, np.float16)
        disk[name].write((0, value.shape[-2]), (0, value.shape[-1]), value)
    folder = save_bundle(dataclasses.replace(result, **disk), tmp_path / "scene")
    with np.load(folder / "scene.npz") as npz:
        assert np.array_equal(npz["latent"], result.latent.numpy().astype(np.float16))
        assert np.array_equal(npz["weights"], result.weights.numpy().astype(np.float16))
    assert load_bundle(folder).latent.shape == (2, 4, 37, 53)


def test_without_patch_kernels(tmp_path):
    result = fake_result(patches=None)
    bundle = load_bundle(save_bundle(result, tmp_path / "b"))
    assert bundle.patch_kernels is None
    assert bundle.meta["shapes"]["patches"] is None
    assert bundle.latent.shape == (1, 4, 37, 53)


def test_load_accepts_the_npz_path(saved):
    _, folder = saved
    assert load_bundle(folder / "scene.npz").latent.shape == (3, 4, 37, 53)


def test_refuses_to_overwrite(saved):
    result, folder = saved
    before = (folder / "scene.npz").read_bytes()
    with pytest.raises(OutputError, match="exists"):
        save_bundle(result, folder)
    assert (folder / "scene.npz").read_bytes() == before
    save_bundle(fake_result(seed=5), folder, overwrite=True)
    assert load_bundle(folder).latent.shape == (1, 4, 37, 53)


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_missing_folder(tmp_path):
    with pytest.raises(InputError) as err:
        load_bundle(tmp_path / "nope")
    assert "nope" in one_line(err)


def test_missing_json(saved):
    _, folder = saved
    (folder / "scene.json").unlink()
    with pytest.raises(InputError) as err:
        load_bundle(folder)
    assert "scene.json is missing" in one_line(err)


def test_missing_npz(saved):
    _, folder = saved
    (folder / "scene.npz").unlink()
    with pytest.raises(InputError) as err:
        load_bundle(folder)
    assert "scene.npz is missing" in one_line(err)


def test_corrupt_npz(saved):
    _, folder = saved
    data = (folder / "scene.npz").read_bytes()
    (folder / "scene.npz").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError) as err:
        load_bundle(folder)
    assert "scene.npz" in one_line(err)


def test_corrupt_json(saved):
    _, folder = saved
    (folder / "scene.json").write_text("{not json")
    with pytest.raises(InputError) as err:
        load_bundle(folder)
    assert "unreadable JSON" in one_line(err)


def test_wrong_version(saved):
    _, folder = saved
    meta = json.loads((folder / "scene.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (folder / "scene.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as err:
        load_bundle(folder)
    assert f"format version {FORMAT_VERSION + 1}" in one_line(err)


def test_files_from_two_saves(saved, tmp_path):
    _, folder = saved
    other = save_bundle(fake_result(channels=3), tmp_path / "other")
    (folder / "scene.json").write_bytes((other / "scene.json").read_bytes())
    with pytest.raises(InputError) as err:
        load_bundle(folder)
    assert "different saves" in one_line(err)


def test_inconsistent_shapes(saved):
    _, folder = saved
    with np.load(folder / "scene.npz") as npz:
        entries = {k: npz[k] for k in npz.files}
    entries["weights"] = entries["weights"][:, :-1]
    np.savez(folder / "scene.npz", **entries)
    with pytest.raises(InputError) as err:
        load_bundle(folder)
    assert "'weights' has shape (4, 36, 53)" in one_line(err)


def test_not_a_zip(saved):
    _, folder = saved
    (folder / "scene.npz").write_bytes(b"hello")
    with pytest.raises(InputError):
        load_bundle(folder)
    assert not zipfile.is_zipfile(folder / "scene.npz")


def test_fit_config_from_dict_ignores_unknown_keys():
    config = FitConfig(patches=(3, 4), butterworth=ButterworthParams(beta=0.1))
    from dataclasses import asdict

    data = json.loads(json.dumps(asdict(config)))
    data["from_the_future"] = 1
    assert fit_config_from_dict(data) == config


def test_read_gd_state_sources(saved, tmp_path):
    result, folder = saved
    want = result.gd_state
    for source in (folder, folder / "scene.npz"):
        got = read_gd_state(source)
        assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    torch.save(want, tmp_path / "gd.pt")
    assert set(read_gd_state(tmp_path / "gd.pt")) == set(want)
    np.savez(tmp_path / "gd.npz", **{k: v.numpy() for k, v in want.items()})
    assert set(read_gd_state(tmp_path / "gd.npz")) == set(want)


@pytest.mark.parametrize("content", [b"junk", None])
def test_read_gd_state_errors(tmp_path, content):
    path = tmp_path / "gd.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as err:
        read_gd_state(path)
    assert "--warm-start" in one_line(err) and "gd.pt" in str(err.value)
