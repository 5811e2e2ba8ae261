"""The fitted scene bundle: everything a fit learned about one DP capture, on disk.

``edgedp fit`` writes it to ``OUTDIR/scene/``; the export (ONNX re-render graph with the
compositing weights and kernels baked in, G_D export) reads it.  Two files:

``scene.npz`` (plain NumPy archive, uncompressed, readable with ``numpy.load(path,
allow_pickle=False)`` on a device without PyTorch).  Keys (format version 2):

=====================  =========================  ===================================================
key                    shape / dtype              meaning
=====================  =========================  ===================================================
``format``             () unicode                 ``"edgedp-scene"``
``format_version``     () int32                   :data:`FORMAT_VERSION`
``bundle_id``          () unicode                 random hex id, equal to ``scene.json``'s (pairing check)
``latent``             (C, L, H, W) float16       latent map: per-layer sharp image ``x_i``, per channel
``weights``            (L, H, W) float16          compositing weights ``d_i`` (sum to 1 over layers up to the
                                                  float16 rounding; :func:`load_bundle` renormalizes them)
``radii``              (L,) float32               signed blur radius of each layer (px), increasing
``kernels``            (2, L, K, K) float32       parametric kernels, ``[left, right]`` x layers
``patch_kernels``      (Pr, Pc, 2, L, K, K) f32   stage 3 kernels per cell of a Pr x Pc grid (absent
                                                  when stage 3 did not run)
``defocus``            (H, W) float32             signed blur radius per pixel, ``sum_i d_i r_i``
``allinfocus``         (C, H, W) float32          all-in-focus image, the normalized input's scale
``gd/<param name>``    as in G_D                  G_D's state dict (float tensors as float32, integer
                                                  buffers keep their integer dtype)
=====================  =========================  ===================================================

``scene.json`` (UTF-8): ``format``, ``format_version``, ``bundle_id``, ``created`` (ISO 8601,
UTC), ``versions`` (edgedp, torch, numpy, python), ``shapes`` (channels, layers, height, width,
kernel_size, patches or null), ``arrays`` (name -> shape and stored dtype of every npz entry but
the ``gd/`` ones), ``derived`` (name -> how an array that is not stored follows from the others),
``gd`` (``config``: how to rebuild G_D with :func:`edgedp.models.defocus_net.build_gd`,
``params``: name -> shape, in state-dict order), ``conventions`` (the text of :data:`CONVENTIONS`),
``focus`` (``behind`` or ``both``: what the fit used, :mod:`edgedp.conventions`; bundles
written before it say ``front`` for ``behind``), ``config`` (the FitConfig as a dict, data-
derived fields filled in; :func:`fit_config_from_dict` rebuilds it), ``stages`` (per-stage name,
seconds, iterations, final loss, thinned loss curve), ``disparity`` (the DP disparity summary the
fit used) and ``input`` (paths, black/white level, flat field, crop, ...; empty when unknown).

The MPI alphas are not stored: they follow from the weights, ``alphas[i] = weights[i] /
sum_{j <= i} weights[j]`` (``alphas[0] = 1``; :func:`edgedp.fit.stage2.alphas_from_weights`), and
:func:`load_bundle` derives them.

Why float16 and full resolution (format version 2; measured, README "Large images"): a bundle is
``(C + 1) L`` planes of the frame, 7.9 GB for a 15 MP RGB capture in version 1 (float32, with the
alphas).  The latent map and the weights are stored in float16 (10-bit mantissa, relative rounding
at most 2^-11): the re-render of a bundle read back differs from the float32 one by at most
2.4e-4 (views) and 4e-4 (all-in-focus) of values up to ~1, a quarter of the export's verification
tolerance (``1e-4 + 1e-3 max |ref|``); the weights' rounding moves the defocus map by < 1e-3 px,
which is why ``defocus`` stays float32 (it is what the fit computed).  The weights stay at full
resolution: G_D's own weights are smooth at their grid (8 * gd_scale px), but the bundle's are
fused with the full-resolution likelihood, and re-rendering with G_D's grid weights instead was
4.4 dB worse (re-render PSNR against the input views) on a synthetic scene.

Version 1 bundles (float32 latent and weights, and an ``alphas`` entry) are read as they are.

Re-rendering the captured DP pair from a bundle (views ``v = 0`` left, ``1`` right)::

    y_v = sum_i weights[i] * (latent[c, i] conv kernels[v, i])          (uniform kernels)
    y_v = sum_i weights[i] * sum_p w_p * (latent[c, i] conv patch_kernels[p][v, i])   (stage 3)

with true convolution, kernels centred at ``(K//2, K//2)``, replicated borders, and ``w_p`` the
bilinear tent weights of :func:`edgedp.physics.blur.patch_blend_weights`.  The all-in-focus image is
``sum_i weights[i] * latent[:, i]``.

``scene.npz`` is written member by member from pieces of at most 16 MiB (no copy of the archive
in memory; a tiled fit's on-disk arrays, :class:`edgedp.io.diskarray.DiskArray`, stream straight
into it).  Writes are atomic per file (``scene.npz`` first, ``scene.json`` last) and refuse to replace
existing files unless ``overwrite=True``; a reader checks that both files carry the same
``bundle_id``, so a half-replaced bundle is reported, not silently mixed.
"""

from __future__ import annotations

import dataclasses
import io as _io
import json
import platform
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import __version__
from ..conventions import fit_focus
from ..errors import InputError, OutputError
from ..fit.deconvolution import DeconvolutionConfig
from ..fit.kernel_estimation import FieldEstimationConfig
from ..fit.config import FitConfig, FitResult, StageReport
from ..fit.stage2 import alphas_from_weights
from ..io.diskarray import DiskArray
from ..io.writers import atomic_writer, json_ready, write_json
from ..physics.kernels import ButterworthParams


__all__ = [
    "CONVENTIONS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "JSON_NAME",
    "NPZ_NAME",
    "READABLE_VERSIONS",
    "SceneBundle",
    "fit_config_from_dict",
    "load_bundle",
    "read_gd_state",
    "save_bundle",
]

FORMAT_NAME = "edgedp-scene"
#: Bumped on any incompatible change of keys, shapes or meaning; readers refuse other versions.
FORMAT_VERSION = 2
#: The versions :func:`load_bundle` reads (1: float32 latent / weights and stored alphas).
READABLE_VERSIONS = (1, 2)
#: Arrays stored in float16 (module docstring: why and what it costs).
FLOAT16_ARRAYS = ("latent", "weights")
#: Bytes per piece when an array is streamed into ``scene.npz``.
WRITE_CHUNK_BYTES = 16 * 2**20
NPZ_NAME = "scene.npz"
JSON_NAME = "scene.json"
GD_PREFIX = "gd/"

#: The conventions every array of the bundle follows (also written into ``scene.json``).
CONVENTIONS: dict[str, str] = {
    "views": "view index 0 = left, 1 = right (kernels[0] and patch_kernels[..., 0, :, :, :] are the left view's)",
    "radius_sign": (
        "signed blur radius r in px: r > 0 behind the focal plane (the thesis' 'front focus'), r < 0 in "
        "front of it, r = 0 in focus; radii[i] is layer i's radius, increasing with i; focus 'behind' = r >= 0 "
        "layers only, 'both' = r of either sign (edgedp.conventions)"
    ),
    "disparity": "DP disparity = x_right - x_left (px), with the sign of r",
    "kernel": (
        "kernels (2, L, K, K), K odd, centred at (K//2, K//2) (row, col), non-negative, each sums to 1; for "
        "r > 0 the left kernel's mass lies left of the centre and the right kernel is it rotated by 180 degrees"
    ),
    "blur": (
        "true convolution: the kernel is the point-spread function, a point at p shows up as k(u) at p + u; "
        "borders extended by edge replication; output has the input's size"
    ),
    "compositing": (
        "weights[i] = alphas[i] * prod_{j > i} (1 - alphas[j]) (layer L-1 on top, alphas[0] = 1, weights sum "
        "to 1); view_v = sum_i weights[i] * (latent[:, i] conv kernels[v, i]); allinfocus = sum_i weights[i] * "
        "latent[:, i]; defocus = sum_i weights[i] * radii[i]"
    ),
    "patch_kernels": (
        "(Pr, Pc, 2, L, K, K): one kernel stack per cell of a Pr x Pc grid (row-major from the top left), "
        "blended as sum_p w_p * (x conv k_p) with the bilinear tents of edgedp.physics.patch_blend_weights"
    ),
    "values": (
        "images linear, on the normalized input's scale (~[0, 1], unclipped); latent and weights float16, the "
        "other arrays float32; alphas[i] = weights[i] / sum_{j <= i} weights[j] (not stored)"
    ),
    "channels": "C = 1 (gray/raw) or 3 (RGB); the fitted weights and kernels are shared by every channel",
}


# --------------------------------------------------------------------------------------------
# The loaded bundle
# --------------------------------------------------------------------------------------------


@dataclass
class SceneBundle:
    """A loaded scene bundle: float32 CPU tensors (shapes as in the module docstring) and the
    ``scene.json`` dict as ``meta``.

    Attributes:
        latent: (C, L, H, W); weights, alphas: (L, H, W); radii: (L,); kernels: (2, L, K, K);
        patch_kernels: (Pr, Pc, 2, L, K, K) or None; defocus: (H, W); allinfocus: (C, H, W);
        gd_state: G_D's state dict (name -> tensor, in the saved order);
        meta: the parsed ``scene.json``;
        folder: where it was read from.
    """

    latent: Tensor
    weights: Tensor
    alphas: Tensor
    radii: Tensor
    kernels: Tensor
    patch_kernels: Tensor | None
    defocus: Tensor
    allinfocus: Tensor
    gd_state: dict[str, Tensor]
    meta: dict
    folder: Path = field(default_factory=Path)

    @property
    def focus(self) -> str:
        """``behind`` or ``both``: the layer layout of the fit (an old bundle's ``front`` is
        ``behind``, :mod:`edgedp.conventions`)."""
        return fit_focus(str(self.meta.get("focus")))

    @property
    def gd_config(self) -> dict:
        """How to rebuild G_D (:func:`edgedp.models.defocus_net.build_gd`)."""
        return dict(self.meta.get("gd", {}).get("config", {}))

    @property
    def config(self) -> FitConfig:
        """The FitConfig of the fit, rebuilt from ``scene.json``."""
        return fit_config_from_dict(self.meta.get("config", {}))

    @property
    def stages(self) -> list[StageReport]:
        return [StageReport(**{k: s[k] for k in ("name", "seconds", "iterations", "final_loss", "losses") if k in s})
                for s in self.meta.get("stages", [])]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _array(t: Tensor | np.ndarray, name: str) -> np.ndarray:
    """Tensor -> contiguous CPU numpy array; floating point becomes float32."""
    if isinstance(t, Tensor):
        t = t.detach().cpu()
        a = t.float().numpy() if t.is_floating_point() else t.numpy()
    else:
        a = np.asarray(t)
        if np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
    if a.dtype == object:
        raise ValueError(f"bundle array {name} has dtype object")
    return np.asarray(a, order="C")  # not ascontiguousarray: that turns 0-d into 1-d


def fit_config_from_dict(data: dict) -> FitConfig:
    """Rebuild a :class:`FitConfig` from ``dataclasses.asdict`` output (e.g. ``scene.json``'s
    ``config``).  Unknown keys (written by a newer edgedp) are ignored; missing ones take the
    defaults."""
    names = {f.name for f in dataclasses.fields(FitConfig)}
    kwargs = {k: v for k, v in dict(data).items() if k in names}
    for key, kind in (("butterworth", ButterworthParams), ("deconvolution", DeconvolutionConfig)):
        if isinstance(kwargs.get(key), dict):
            known = {f.name for f in dataclasses.fields(kind)}
            kwargs[key] = kind(**{k: v for k, v in kwargs[key].items() if k in known})
    if isinstance(kwargs.get("kernel_estimation"), dict):
        known = {f.name for f in dataclasses.fields(FieldEstimationConfig)}
        kwargs["kernel_estimation"] = FieldEstimationConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs["kernel_estimation"].items() if k in known}
        )
    elif "kernel_estimation" not in kwargs and "patches" in kwargs:
        kwargs["kernel_estimation"] = None  # a bundle from before the estimation: it did not estimate
    if isinstance(kwargs.get("patches"), list):
        kwargs["patches"] = tuple(int(p) for p in kwargs["patches"])
    return FitConfig(**kwargs)


def _bundle_paths(folder: Path | str) -> tuple[Path, Path, Path]:
    """``folder`` (or its ``scene.npz`` / ``scene.json``) -> (folder, npz, json)."""
    folder = Path(folder)
    if folder.is_file() and folder.name in (NPZ_NAME, JSON_NAME):
        folder = folder.parent
    return folder, folder / NPZ_NAME, folder / JSON_NAME


def _corrupt(path: Path, why: str) -> InputError:
    return InputError(" ".join(f"scene bundle {path}: {why}".split()))


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_bundle(
    result: FitResult,
    folder: Path | str,
    *,
    input_info: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``result`` as a scene bundle into ``folder`` (created if needed); returns ``folder``.

    Args:
        result: a :class:`~edgedp.fit.config.FitResult` (tensors on any device, numpy arrays, or a tiled
            fit's :class:`~edgedp.io.diskarray.DiskArray`; stored as the module docstring says).
        folder: the bundle folder (``OUTDIR/scene`` for ``edgedp fit``).
        input_info: what was read (paths, levels, flat field, crop, ...), stored as ``input``.
        overwrite: replace an existing ``scene.npz`` / ``scene.json``.

    Raises:
        OutputError: a bundle file exists (without ``overwrite``), or the folder is not writable.
        ValueError: inconsistent shapes in ``result`` (a programming error).
    """
    folder, npz_path, json_path = _bundle_paths(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"bundle folder {folder} exists and is not a folder")
    if not overwrite:
        for path in (npz_path, json_path):
            if path.exists():
                raise OutputError(f"output {path} exists (use --overwrite)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create bundle folder {folder} ({err.strerror or err})") from None

    sources: dict[str, Any] = {
        "latent": result.latent,
        "weights": result.weights,
        "radii": result.radii,
        "kernels": result.kernels,
        "defocus": result.defocus,
        "allinfocus": result.allinfocus,
    }
    if result.patch_kernels is not None:
        sources["patch_kernels"] = result.patch_kernels
    for name, value in sources.items():
        if not isinstance(value, (Tensor, np.ndarray, DiskArray)):
            raise ValueError(f"FitResult.{name} is a {type(value).__name__}, not an array")
    dtypes = {name: np.dtype(np.float16 if name in FLOAT16_ARRAYS else np.float32) for name in sources}
    shapes = _check_shapes(sources, "FitResult", ValueError)
    gd = {name: _array(value, f"gd_state[{name}]") for name, value in result.gd_state.items()}

    bundle_id = uuid.uuid4().hex
    entries: dict[str, tuple[Any, np.dtype]] = {
        "format": (np.array(FORMAT_NAME), None),
        "format_version": (np.array(FORMAT_VERSION, dtype=np.int32), None),
        "bundle_id": (np.array(bundle_id), None),
        **{name: (value, dtypes[name]) for name, value in sources.items()},
        **{GD_PREFIX + name: (value, None) for name, value in gd.items()},
    }
    with atomic_writer(npz_path, overwrite=overwrite) as handle:
        _write_npz(handle, entries)

    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "bundle_id": bundle_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "shapes": shapes,
        "arrays": {name: {"shape": [int(n) for n in a.shape], "dtype": str(dtypes[name])} for name, a in sources.items()},
        "derived": {"alphas": "alphas[0] = 1, alphas[i] = weights[i] / sum_{j <= i} weights[j] (edgedp.fit.alphas_from_weights)"},
        "gd": {
            "config": json_ready(result.gd_config),
            "params": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in gd.items()},
        },
        "conventions": dict(CONVENTIONS),
        "focus": result.focus,
        "config": json_ready(result.config),
        "stages": json_ready(result.stages),
        "disparity": json_ready(result.disparity),
        "kernel_field": json_ready(getattr(result, "kernel_field", None)),
        "input": json_ready(input_info or {}),
    }
    write_json(json_path, meta, overwrite=overwrite)
    return folder


def _write_npz(handle, entries: dict[str, tuple[Any, np.dtype | None]]) -> None:
    """A ``numpy.savez``-compatible archive (stored, not compressed; zip64 where a member needs it)
    into ``handle``, each member ``<name>.npy`` written from pieces of at most
    :data:`WRITE_CHUNK_BYTES` (converted to its ``dtype`` piece by piece; None: as it is)."""
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, (value, dtype) in entries.items():
            if dtype is None:
                value, dtype = np.asarray(value), np.asarray(value).dtype
            shape = tuple(int(n) for n in value.shape)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
            with archive.open(name + ".npy", "w", force_zip64=nbytes > 2**31 - 2**20) as member:
                np.lib.format.write_array_header_1_0(member, header)
                for piece in _pieces(value, dtype):
                    member.write(np.ascontiguousarray(piece, dtype=dtype).data)


def _pieces(value: Any, dtype: np.dtype):
    """``value`` (Tensor, ndarray or DiskArray) in C order as pieces of at most
    :data:`WRITE_CHUNK_BYTES` (of ``dtype``)."""
    if isinstance(value, DiskArray):
        yield from value.chunks(WRITE_CHUNK_BYTES // max(1, value.dtype.itemsize) * value.dtype.itemsize)
        return
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        value = value.numpy()
    value = np.asarray(value)
    if value.ndim < 2:
        yield value
        return
    rows = value.reshape(-1, value.shape[-1])
    step = max(1, WRITE_CHUNK_BYTES // max(1, value.shape[-1] * max(dtype.itemsize, value.dtype.itemsize)))
    for r0 in range(0, rows.shape[0], step):
        yield rows[r0 : r0 + step]


def versions() -> dict[str, str]:
    """Versions of edgedp and the libraries that produced a file."""
    return {
        "edgedp": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _check_shapes(arrays: dict[str, np.ndarray], where: Any, error: type[Exception]) -> dict:
    """Check the arrays agree (C, L, H, W, K, grid); return the ``shapes`` summary."""

    def fail(why: str) -> Exception:
        return error(f"{where}: {why}") if error is ValueError else _corrupt(where, why)

    for name, ndim in (("latent", 4), ("weights", 3), ("alphas", 3), ("radii", 1), ("kernels", 4),
                       ("defocus", 2), ("allinfocus", 3)):
        if name not in arrays:
            if name == "alphas":  # format version 2 derives them from the weights
                continue
            raise fail(f"array '{name}' is missing")
        if arrays[name].ndim != ndim:
            raise fail(f"'{name}' has shape {tuple(arrays[name].shape)}, expected {ndim} dimensions")
    c, layers, h, w = arrays["latent"].shape
    k = arrays["kernels"].shape[-1]
    expected = {
        "weights": (layers, h, w),
        "alphas": (layers, h, w),
        "radii": (layers,),
        "kernels": (2, layers, k, k),
        "defocus": (h, w),
        "allinfocus": (c, h, w),
    }
    patches = None
    if "patch_kernels" in arrays:
        pk = arrays["patch_kernels"]
        if pk.ndim != 6:
            raise fail(f"'patch_kernels' has shape {tuple(pk.shape)}, expected (Pr, Pc, 2, L, K, K)")
        patches = [int(pk.shape[0]), int(pk.shape[1])]
        expected["patch_kernels"] = (pk.shape[0], pk.shape[1], 2, layers, k, k)
    for name, shape in expected.items():
        if name not in arrays:
            continue
        if tuple(arrays[name].shape) != shape:
            raise fail(f"'{name}' has shape {tuple(arrays[name].shape)}, expected {shape} (from latent {(c, layers, h, w)}, K={k})")
    if k % 2 == 0:
        raise fail(f"kernel size {k} is even (must be odd)")
    return {"channels": int(c), "layers": int(layers), "height": int(h), "width": int(w),
            "kernel_size": int(k), "patches": patches}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _read_meta(json_path: Path) -> dict:
    if not json_path.is_file():
        raise _corrupt(json_path.parent, f"{JSON_NAME} is missing")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise _corrupt(json_path, f"unreadable JSON ({err.__class__.__name__})") from None
    if not isinstance(meta, dict):
        raise _corrupt(json_path, "not a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise _corrupt(json_path, f"not an {FORMAT_NAME} bundle (format {meta.get('format')!r})")
    _check_version(meta.get("format_version"), json_path)
    return meta


def _check_version(version: Any, path: Path) -> None:
    if version not in READABLE_VERSIONS:
        raise _corrupt(
            path,
            f"format version {version}, this edgedp {__version__} reads versions "
            f"{', '.join(str(v) for v in READABLE_VERSIONS)} (re-run the fit or use a matching edgedp)",
        )


def _open_npz(npz_path: Path):
    if not npz_path.is_file():
        raise _corrupt(npz_path.parent, f"{NPZ_NAME} is missing")
    try:
        return np.load(npz_path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise _corrupt(npz_path, f"unreadable archive ({err.__class__.__name__}: {err})") from None


def _scalar(npz, key: str, path: Path):
    if key not in npz.files:
        raise _corrupt(path, f"entry '{key}' is missing")
    value = npz[key]
    if value.shape != ():
        raise _corrupt(path, f"entry '{key}' is not a scalar")
    return value.item()


def load_bundle(folder: Path | str) -> SceneBundle:
    """Read a scene bundle written by :func:`save_bundle`.

    Args:
        folder: the bundle folder, or its ``scene.npz`` / ``scene.json``.

    Returns:
        :class:`SceneBundle` (float32 CPU tensors, ``gd_state``, the ``scene.json`` dict);
        version 2's float16 weights renormalized to sum to 1, its alphas derived from them.

    Raises:
        InputError: one line naming the file: a missing or corrupt file, a format version not in
            :data:`READABLE_VERSIONS`, files from two different saves, inconsistent shapes.
    """
    folder, npz_path, json_path = _bundle_paths(folder)
    if not folder.is_dir():
        raise InputError(f"scene bundle {folder} does not exist (expected a folder with {NPZ_NAME} and {JSON_NAME})")
    meta = _read_meta(json_path)
    arrays: dict[str, np.ndarray] = {}
    gd: dict[str, Tensor] = {}
    with _open_npz(npz_path) as npz:
        try:
            if _scalar(npz, "format", npz_path) != FORMAT_NAME:
                raise _corrupt(npz_path, f"not an {FORMAT_NAME} archive")
            _check_version(_scalar(npz, "format_version", npz_path), npz_path)
            if _scalar(npz, "bundle_id", npz_path) != meta.get("bundle_id"):
                raise _corrupt(folder, f"{NPZ_NAME} and {JSON_NAME} come from different saves (bundle_id differs)")
            for key in npz.files:
                if key in ("format", "format_version", "bundle_id"):
                    continue
                value = npz[key]
                if key.startswith(GD_PREFIX):
                    gd[key[len(GD_PREFIX):]] = torch.from_numpy(np.array(value))
                else:
                    arrays[key] = value.astype(np.float32, copy=False)
        except InputError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
            raise _corrupt(npz_path, f"unreadable archive ({err.__class__.__name__}: {err})") from None
    _check_shapes(arrays, npz_path, InputError)
    for name, a in arrays.items():
        if not np.isfinite(a).all():
            raise _corrupt(npz_path, f"'{name}' contains NaN or infinite values")
    if meta.get("format_version", 1) >= 2:
        # float16 weights sum to 1 only to ~1e-3: make them a partition of unity again
        total = arrays["weights"].sum(axis=0, keepdims=True, dtype=np.float32)
        if not (total > 0).all():
            raise _corrupt(npz_path, "'weights' do not sum to a positive value at every pixel")
        arrays["weights"] = arrays["weights"] / total
    if "alphas" not in arrays:
        arrays["alphas"] = alphas_from_weights(torch.from_numpy(np.ascontiguousarray(arrays["weights"]))).numpy()
    # Keep the state dict in the order scene.json lists it (np.savez keeps it too; belt and braces).
    order = list(meta.get("gd", {}).get("params", {}))
    if set(order) == set(gd):
        gd = {name: gd[name] for name in order}
    t = {name: torch.from_numpy(np.asarray(a, order="C")) for name, a in arrays.items()}
    return SceneBundle(
        latent=t["latent"],
        weights=t["weights"],
        alphas=t["alphas"],
        radii=t["radii"],
        kernels=t["kernels"],
        patch_kernels=t.get("patch_kernels"),
        defocus=t["defocus"],
        allinfocus=t["allinfocus"],
        gd_state=gd,
        meta=meta,
        folder=folder,
    )


def read_gd_state(path: Path | str, *, what: str = "--warm-start") -> dict[str, Tensor]:
    """G_D weights to warm-start a fit from: a bundle folder, its ``scene.npz``, an ``.npz`` of
    named arrays (``gd/``-prefixed or bare parameter names) or a ``.pt`` / ``.pth`` state dict
    (``torch.save(model.state_dict())``, optionally under a ``state_dict`` / ``gd_state`` key).

    Returns:
        name -> tensor (float32 for floating point).  Shapes are not checked here (they depend
        on the network the fit builds).

    Raises:
        InputError: one line naming ``what`` and the file: missing, unreadable, no weights in it,
            non-tensor values or NaNs.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / NPZ_NAME).is_file():
            raise InputError(f"{what} {path}: a folder must be a scene bundle holding {NPZ_NAME}")
        path = path / NPZ_NAME
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    suffix = path.suffix.lower()
    state: dict[str, Tensor] = {}
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.files)
                prefixed = [k for k in keys if k.startswith(GD_PREFIX)]
                if "format" in keys and not prefixed:
                    raise InputError(f"{what} {path}: the scene bundle holds no G_D weights")
                if "format_version" in keys:
                    _check_version(npz["format_version"].item(), path)
                for key in prefixed or keys:
                    name = key[len(GD_PREFIX):] if prefixed else key
                    state[name] = torch.from_numpy(np.array(npz[key]))
        except InputError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, TypeError) as err:
            raise InputError(f"{what} {path}: unreadable .npz ({err.__class__.__name__})") from None
    elif suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch.load raises many kinds for a bad file
            raise InputError(f"{what} {path}: unreadable state dict ({err.__class__.__name__})") from None
        if isinstance(obj, dict):
            for key in ("gd_state", "state_dict"):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise InputError(f"{what} {path}: expected a state dict (parameter name -> tensor)")
        state = {str(k): v.detach().cpu() for k, v in obj.items()}
    else:
        raise InputError(f"{what} {path}: expected a scene bundle folder, a .npz or a .pt/.pth state dict")
    if not state:
        raise InputError(f"{what} {path}: no weights in it")
    for name, value in state.items():
        if value.is_floating_point():
            if not torch.isfinite(value).all():
                raise InputError(f"{what} {path}: weight '{name}' contains NaN or infinite values")
            state[name] = value.float()
    return state
