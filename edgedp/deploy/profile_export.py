"""Export a device profile (``edgedp tune``) for the instant on-device path: ``edgedp export
PHONE.profile -o OUT``.

OUT gets three files, in the sidecar format of a scene export (:mod:`edgedp_runtime.schema`), so
``edgedp-runtime predict`` works on it unchanged and ``edgedp-runtime instant``
(:mod:`edgedp_runtime.instant`) predicts a defocus map and a quick all-in-focus image of a new
capture with ONNX Runtime and numpy alone:

``gd.onnx``
    the profile's G_D (:func:`edgedp.deploy.onnx_gd.export_gd_onnx`: pair (1, 2, H, W) -> alphas
    (1, L, H, W), defocus (1, 1, H, W); dynamic H, W multiples of ``8 * input_scale`` by default;
    metadata props as for a scene, ``scene_id`` = the device name).
``kernels.npy``
    (2, L, K, K) float32: ``kernel_pyramid(profile.radii, profile.kernel_model,
    profile.butterworth)``, [left, right] x layers, true-convolution PSFs centred at
    ``(K // 2, K // 2)`` (CONVENTIONS.md).
``patch_kernels.npy``
    only for a profile with a kernel field (``edgedp tune --kernels``): (Pr, Pc, 2, L, K, K)
    float32, the field's per-cell layer kernels for the profile's radii as ``edgedp fit --profile``
    makes them (:func:`instant_kernels`); ``kernels.npy`` is then their mean over the cells, and
    the runtime's instant path blends one solve per group of cells
    (``edgedp_runtime.instant.solve_latent_grouped``, at most ``kernel_groups`` groups).
``export.json``
    the sidecar of :mod:`edgedp_runtime.schema` with ``"source": "profile"``, ``"scene_id"`` = the
    device name, ``"height"`` / ``"width"`` = the profile's sensor size, ``"graphs": {"gd": ...}``,
    ``"verification": {"gd": verify_gd_onnx's dict}`` ({} when not verified), and
    ``"profile": {"path": absolute path or null, "device", "created", "input": {"black_level",
    "white_level", "flat_field": [left, right] paths or null, "view_gain": {"model": "exp-poly3",
    "coefficients": [10 floats]} or null (edgedp.physics.view_gain.VIEW_GAIN_MODEL: the right view's gain over
    the capture, applied after the flat field when the capture is read with the profile's flat
    field)} (null: edgedp fit's defaults), "kernel": {"model", "butterworth": {order, cutoff, beta,
    smooth_sigma}, "radius_scale", "asymmetry"}, "gd": {"layers", "width", "input_scale",
    "focus"}, "sensor": {"height", "width"}, "captures": count}``, ``"instant":
    schema.instant_entry(...)``: ``{"kernels": "kernels.npy", "kernel_size": K, "pad": K // 2 + 8
    (replicate padding of the stage-1 solve), "latent_reg": {"gain": 4.0, "floor": 1e-3, "ceil":
    0.3} (lam = clamp(gain * sigma^2 / s^2, floor, ceil), edgedp.physics.noise.default_latent_reg),
    "fuse_window": 15 (px, edgedp.fit.stage2.fuse_with_likelihood's window; 0 = G_D's weights alone),
    "weight_floor": 1e-6, "deconvolution": {...}}`` plus, with a kernel field, ``"patch_kernels":
    "patch_kernels.npy", "patch_grid": [Pr, Pc], "kernel_groups": 8``

The defaults of ``instant`` are :class:`edgedp.fit.config.FitConfig`'s (``fuse_window``) and
:func:`edgedp.physics.noise.default_latent_reg`'s, so the instant path is ``edgedp fit --profile`` with
zero Stage-2 iterations, in numpy, without the final TV step (:data:`INSTANT_TV_ITERATIONS`).  G_D is verified against PyTorch on a deterministic synthetic
texture (no capture needed) unless ``verify=False``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from edgedp_runtime import schema

from .. import __version__
from ..errors import InputError, OutputError
from ..io.writers import json_ready, write_json, write_npy
from ..fit.stage2 import FUSE_WEIGHT_FLOOR
from ..fit.config import FitConfig
from ..fit.stage3 import FIELD_GROUPS
from ..physics.kernels import kernel_pyramid
from ..physics.noise import default_latent_reg
from ..formats.profile import DeviceProfile, load_profile, view_gain_entry


__all__ = ["INSTANT_DEFAULTS", "instant_settings", "export_profile", "instant_kernels", "load_profile_source", "profile_files", "profile_gd_source", "profile_test_image", "verify_profile_export"]

GD_FILE = schema.GRAPHS["gd"].file
KERNELS_FILE = schema.KERNELS_FILE
PATCH_KERNELS_FILE = schema.PATCH_KERNELS_FILE
SIDECAR_NAME = schema.SIDECAR_NAME
#: The instant path's settings: read off edgedp fit's own defaults (``default_latent_reg``'s
#: keyword defaults, ``FitConfig.fuse_window``, the clamp of ``fuse_with_likelihood``), so the
#: two cannot drift apart.
INSTANT_DEFAULTS: dict[str, Any] = {
    "latent_reg": {
        name: param.default
        for name, param in inspect.signature(default_latent_reg).parameters.items()
        if name in schema.INSTANT_LATENT_REG
    },
    "fuse_window": FitConfig().fuse_window,
    "weight_floor": FUSE_WEIGHT_FLOOR,
    "deconvolution": {
        key: getattr(FitConfig().deconvolution, key) for key in schema.INSTANT_DECONVOLUTION
    },
}
#: The instant path's TV steps: none.  Measured on the Pixel 4 dev scenes (README "Instant path"):
#: the step took 4.2 s of a 6 s call and moved the mean gain by -0.13 dB with the mean kernels and
#: -0.02 dB with the kernel field (held-out captures: -0.005 dB, issue 16), so the call without it
#: is both faster and no worse.  ``edgedp fit`` keeps its TV step.
INSTANT_TV_ITERATIONS = 0
#: With a kernel field, the most groups of cells the instant path solves apart
#: (``edgedp_runtime.instant.InstantConfig.kernel_groups``): the fit's own bound, as the other
#: instant settings are read off the fit's.
INSTANT_KERNEL_GROUPS = FIELD_GROUPS


def instant_settings(with_field: bool, kernel_groups: int | None = None) -> dict[str, Any]:
    """:data:`INSTANT_DEFAULTS` with :data:`INSTANT_TV_ITERATIONS` TV steps, and with a kernel field
    ``kernel_groups`` (None: :data:`INSTANT_KERNEL_GROUPS`)."""
    settings = {key: dict(value) if isinstance(value, dict) else value for key, value in INSTANT_DEFAULTS.items()}
    settings["deconvolution"]["iterations"] = INSTANT_TV_ITERATIONS
    if with_field:
        settings["kernel_groups"] = INSTANT_KERNEL_GROUPS if kernel_groups is None else int(kernel_groups)
    return settings


INPUT_NORMALIZATION = (
    "linear sensor values (raw - black_level) / white_level, unclipped, float32 (the profile's input settings; "
    "right view flat-field corrected when the profile names white-sheet frames)"
)


def profile_test_image(height: int, width: int, *, seed: int = 0) -> Tensor:
    """A deterministic smooth random texture (1, h, w) in [0.05, 0.95] (h, w at most 256 on the
    longer side, keeping the aspect ratio): octaves of bilinearly up-sampled seeded noise.  Stands
    in for a scene's all-in-focus image when G_D is verified (onnx_gd builds its DP-like test pair
    from it)."""
    s = 256 / max(height, width, 1)
    h, w = max(8, round(height * min(s, 1.0))), max(8, round(width * min(s, 1.0)))
    g = torch.Generator().manual_seed(seed)
    image = torch.zeros(1, 1, h, w)
    for cells, amp in ((4, 1.0), (16, 0.5), (64, 0.25)):
        noise = torch.rand(1, 1, max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w)), generator=g)
        image += amp * F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
    image = image[0]
    return 0.05 + 0.9 * (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)


@dataclasses.dataclass(frozen=True)
class _ProfileGD:
    """What :mod:`edgedp.deploy.onnx_gd` reads from a scene bundle, built from a profile."""

    gd_config: dict
    gd_state: dict
    radii: Tensor
    defocus: Tensor  # only its shape (H, W) is read (static graph size)
    allinfocus: Tensor  # (1, h, w): the test image
    meta: dict
    folder: str


def profile_gd_source(profile: DeviceProfile, where: str) -> _ProfileGD:
    """A device profile as the source of G_D's export and verification (what a scene bundle gives
    them); a one-line InputError naming ``where`` for radii that do not fit its G_D."""
    if not profile.radii:
        raise InputError(f"{where}: has no layer radii (gd.radii)")
    if len(profile.radii) != profile.layers:
        raise InputError(f"{where}: {len(profile.radii)} layer radii but a {profile.layers}-layer G_D")
    if not all(math.isfinite(r) for r in profile.radii):
        raise InputError(f"{where}: layer radii are not finite")
    if profile.height < 1 or profile.width < 1:
        raise InputError(f"{where}: sensor size {profile.height}x{profile.width} is not positive")
    return _ProfileGD(
        gd_config={"layers": profile.layers, "width": profile.gd_width, "input_scale": profile.gd_scale},
        gd_state=profile.gd_state,
        radii=torch.tensor(profile.radii, dtype=torch.float32),
        defocus=torch.zeros(1).expand(profile.height, profile.width),
        allinfocus=profile_test_image(profile.height, profile.width),
        meta={"bundle_id": profile.device},
        folder=where,
    )


def _profile_section(profile: DeviceProfile, path: Path | None) -> dict[str, Any]:
    return {
        "path": None if path is None else str(path.resolve()),
        "device": profile.device,
        "created": profile.created,
        "input": {
            "black_level": profile.black_level,
            "white_level": profile.white_level,
            "flat_field": None if profile.flat_field is None else list(profile.flat_field),
            # left/right gain over the frame measured by edgedp tune (after the flat field above)
            "view_gain": view_gain_entry(profile.view_gain),
        },
        "kernel": {
            "model": profile.kernel_model,
            "butterworth": dataclasses.asdict(profile.butterworth),
            "radius_scale": profile.radius_scale,
            "asymmetry": profile.asymmetry,
        },
        "gd": {"layers": profile.layers, "width": profile.gd_width, "input_scale": profile.gd_scale, "focus": profile.focus},
        "sensor": {"height": profile.height, "width": profile.width},
        "captures": len(profile.captures),
    }


def export_profile(
    profile: DeviceProfile | Path | str,
    out: Path | str,
    *,
    opset: int = 17,
    dynamic: bool = True,
    verify: bool = True,
    overwrite: bool = False,
    atol: float = 1e-4,
    instant_field: bool = True,
    kernel_groups: int | None = None,
    path: Path | None = None,
) -> dict[str, Any]:
    """Write ``gd.onnx``, ``kernels.npy`` (and ``patch_kernels.npy`` for a kernel field) and
    ``export.json`` for a device profile into ``out`` (module docstring); returns the sidecar dict.

    ``profile``: a :class:`DeviceProfile` or the path of a profile file; ``path``: the file a
    loaded profile was read from (recorded in the sidecar).  ``dynamic``: gd.onnx
    takes any H, W (multiples of ``8 * input_scale``), else the profile's sensor size rounded up.
    ``verify``: run gd.onnx in ONNX Runtime (CPU) against PyTorch at two sizes; the result goes
    into the sidecar's ``verification.gd`` (``passed``: max abs error <= ``atol``).
    ``instant_field``: the instant path solves with the profile's kernel field (else its mean
    kernels), at most ``kernel_groups`` groups of cells (None: :data:`INSTANT_KERNEL_GROUPS`;
    refused for a profile without a field).

    Raises:
        InputError: unreadable profile, or radii / G_D weights that do not fit its layers, or
            kernels that cannot be built.
        OutputError: a file of the export exists and ``overwrite`` is False; ``out`` is a file or
            not writable; onnx / onnxruntime missing.
    """
    from .onnx_gd import export_gd_onnx, verify_gd_onnx

    profile, path, where = load_profile_source(profile, path)
    bundle = profile_gd_source(profile, where)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder")
    existing = [out / name for name in profile_files() if (out / name).exists()]
    if existing and not overwrite:
        raise OutputError(f"{existing[0]} exists (use --overwrite to replace it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output folder {out} ({err.strerror or err})") from None

    kernels, patch_kernels = instant_kernels(profile, where)
    if kernel_groups is not None and patch_kernels is None:
        raise InputError(f"{where}: --instant-groups groups a kernel field's cells, and this profile has no kernel field")
    notes = []
    if patch_kernels is not None and not instant_field:
        notes.append(f"the profile's {patch_kernels.shape[0]}x{patch_kernels.shape[1]} kernel field goes to the instant path as its "
                     "mean kernels (--instant-mean-kernels)")
        patch_kernels = None
    k = int(kernels.shape[-1])
    # The sidecar is written last: a failed export leaves no export.json naming missing files.
    entry = export_gd_onnx(bundle, out / GD_FILE, opset=opset, dynamic=dynamic)
    write_npy(out / KERNELS_FILE, kernels, overwrite=True)
    patch_entry: dict[str, Any] = {}
    if patch_kernels is not None:
        write_npy(out / PATCH_KERNELS_FILE, patch_kernels, overwrite=True)
        patch_entry = {"patch_kernels": PATCH_KERNELS_FILE, "patch_grid": patch_kernels.shape[:2]}
    elif (out / PATCH_KERNELS_FILE).exists():  # an earlier export's field (overwrite checked above)
        (out / PATCH_KERNELS_FILE).unlink()
    sidecar = schema.new_sidecar(
        source="profile", edgedp_version=__version__, scene_id=profile.device, opset=int(opset),
        height=profile.height, width=profile.width, layers=profile.layers, kernel_size=k,
        radii=[float(r) for r in profile.radii], kernel_model=profile.kernel_model,
        input_normalization=INPUT_NORMALIZATION, graphs={"gd": json_ready(entry)},
        profile=_profile_section(profile, path),
        instant=schema.instant_entry(kernel_size=k, pad=k // 2 + 8, kernels=KERNELS_FILE, **patch_entry, **instant_settings(patch_kernels is not None, kernel_groups)),
    )
    if notes:
        sidecar["notes"] = notes
    if verify:
        sidecar["verification"] = {"gd": verify_gd_onnx(bundle, out / GD_FILE, atol=atol)}
    write_json(out / SIDECAR_NAME, sidecar, overwrite=True)
    return sidecar


def instant_kernels(profile: DeviceProfile, where: str = "profile") -> tuple[np.ndarray, np.ndarray | None]:
    """The instant path's kernels of a profile, float32: ``(kernels (2, L, K, K), patch_kernels
    (Pr, Pc, 2, L, K, K) or None)``.

    Without a kernel field: ``kernel_pyramid(profile.radii, profile.kernel_model,
    profile.butterworth)`` and None.  With one: what ``edgedp fit --profile`` uses,
    :func:`edgedp.fit.pipeline.field_kernels` of the field for the profile's radii (disparity per
    radius :func:`edgedp.fit.pipeline.field_disparity_per_radius` of the profile's fit config,
    at least the pyramid's K), and as ``kernels`` their mean over the cells (the fit's uniform
    kernels with a field).  [left, right] x layers, true-convolution PSFs centred at ``K // 2``.
    One-line InputError when they cannot be built."""
    from ..fit.pipeline import field_kernels

    try:
        kernels = kernel_pyramid(list(profile.radii), profile.kernel_model, profile.butterworth)
        if profile.kernel_field is None:
            return kernels.numpy().astype(np.float32), None
        config = profile.apply_to(FitConfig())
        field = profile.kernel_field.to(dtype=torch.float32)
        patch = field_kernels(field, torch.tensor(profile.radii, dtype=torch.float32), config, int(kernels.shape[-1]))
    except ValueError as err:
        raise InputError(f"{where}: cannot build its kernels: {err}") from None
    patch = patch.detach().cpu().float()
    return patch.mean(dim=(0, 1)).numpy().astype(np.float32), patch.numpy().astype(np.float32)


def profile_files() -> list[str]:
    """Every file a profile export writes (before engines)."""
    return [schema.GRAPHS[g].file for g in schema.SOURCE_GRAPHS["profile"]] + list(schema.SOURCE_FILES["profile"]) + [SIDECAR_NAME]


def load_profile_source(profile: DeviceProfile | Path | str, path: Path | None = None) -> tuple[DeviceProfile, Path | None, str]:
    """``(profile, its path or None, a name for messages)`` of a profile or a profile file;
    ``path``: the file a loaded ``profile`` was read from."""
    if not isinstance(profile, DeviceProfile):
        path = Path(profile)
        profile = load_profile(path)
    where = f"profile {path}" if path is not None else f"profile '{profile.device}'"
    return profile, path, where


def verify_profile_export(
    out: Path | str, profile: DeviceProfile | Path | str | None = None, *, atol: float = 1e-4,
    rtol: float | None = None, fp16: bool = False,
) -> dict[str, Any]:
    """Re-run ``out/gd.onnx`` of a profile export in ONNX Runtime (CPU) against PyTorch (what
    ``edgedp verify`` needs for ``"source": "profile"``; ``fp16``: its FP16 emulation).
    ``profile``: default the file recorded in the sidecar (``profile.path``).  Returns ``{"gd":
    verify_gd_onnx's dict}``.

    Raises:
        InputError: no profile export in ``out``, the profile is missing, or it is another device's.
    """
    from .onnx_export import read_sidecar
    from .onnx_gd import verify_gd_onnx

    out = Path(out)
    side = read_sidecar(out)
    if side.get("source") != "profile":
        raise InputError(f"{out / SIDECAR_NAME} is not a profile export (no \"source\": \"profile\")")
    if not isinstance(profile, DeviceProfile):
        recorded = (side.get("profile") or {}).get("path")
        if profile is None and not recorded:
            raise InputError(f"{out / SIDECAR_NAME} names no profile file; pass the profile")
        profile = Path(profile if profile is not None else recorded)
    profile, _, where = load_profile_source(profile)
    if profile.device != side.get("scene_id"):
        raise InputError(f"{out / SIDECAR_NAME} belongs to device {side.get('scene_id')!r}, not to profile '{profile.device}'")
    return {"gd": verify_gd_onnx(profile_gd_source(profile, where), out / GD_FILE, atol=atol, rtol=rtol, fp16=fp16)}
