"""Device profile: what `edgedp tune` learned about one phone, in one file (issue 5).

Written by ``edgedp tune`` (:mod:`edgedp.fit.device_tuning`), read by ``edgedp fit --profile`` (kernel shape,
radius per disparity, layer count, G_D warm start, input settings, left/right gain) and by
``edgedp export PHONE.profile`` (:mod:`edgedp.deploy.profile_export`: gd.onnx + kernels for the instant
on-device path).

File format (``PHONE.profile``): an uncompressed zip archive readable with
``numpy.load(path, allow_pickle=False)`` (no PyTorch needed).  Members:

=====================  ==========================  ===============================================
key                    shape / dtype               meaning
=====================  ==========================  ===============================================
``format``             () unicode                  ``"edgedp-profile"``
``format_version``     () int32                    :data:`FORMAT_VERSION`
``meta``               () unicode                  the JSON document below
``gd/<param name>``    as in G_D                   G_D's state dict (floats as float32)
``kernel_field/evidence_*``  (C, 2), (C, Pr, Pc)    optional: the kernel-field evidence ``edgedp tune``
                                                   pooled over its captures (:data:`EVIDENCE_MEMBERS`)
``kernel_field/pairs`` (Pr, Pc, 2, K, K) float32   optional: a kernel field
                                                   (:class:`edgedp.physics.kernel_field.KernelField`,
                                                   behind pairs [left, right] per cell, recentred)
=====================  ==========================  ===============================================

``meta`` (JSON): ``format``, ``format_version``, ``created`` (ISO 8601 UTC), ``versions``
(edgedp, torch, numpy, python), ``device`` (free-text device name), ``input`` (``black_level``,
``white_level``, ``flat_field`` paths or null), ``kernel`` (``model``, ``butterworth`` fields,
``radius_scale``: multiplier of the blur radius per px of *measured* disparity (edgedp.physics.disparity's
extent) relative to the model's nominal ``1 / disparity_per_radius``, ``asymmetry``: the right
view's gain at the frame centre or null; ``field``: ``{grid: [Pr, Pc], source, size: K}`` when the
profile holds a kernel field, else absent), ``view_gain`` (``model``: :data:`VIEW_GAIN_MODEL`,
``coefficients``: 10 floats; or null: the right view's gain over the frame measured by tune,
relative to the ``input.flat_field`` it was read with),
``gd`` (``layers``, ``width``, ``input_scale``, ``focus``, ``radii``), ``sensor``
(``height``, ``width``: the captures' size), ``captures`` (list of ``path``, ``height``,
``width``, ``disparity_low``, ``disparity_high``, ``seconds``, ``loss``).
Nothing in a profile comes from ground truth.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np
import torch
from torch import Tensor

from ..conventions import BEHIND, fit_focus
from ..errors import InputError, OutputError
from ..fit.config import CaptureInfo
from ..physics.kernels import ButterworthParams
from ..physics.view_gain import VIEW_GAIN_MODEL, VIEW_GAIN_TERMS, view_gain_map

FORMAT = "edgedp-profile"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DeviceProfile:
    """Everything shared across captures of one device.

    Attributes:
        device: free-text device name.
        height, width: sensor (capture) size the profile was tuned on.
        kernel_model: ``butterworth`` or ``disk``.
        butterworth: kernel shape parameters.
        radius_scale: blur radius per disparity relative to the kernel model's nominal value.
        asymmetry: right-view gain at the frame centre, ``exp(view_gain[0])`` (None: not estimated).
        view_gain: coefficients of the left/right gain over the frame (:func:`view_gain_map`),
            estimated from the captures themselves (no white sheet); None: not estimated.
        layers, gd_width, gd_scale: G_D configuration; ``gd_state`` its weights.
        focus: ``behind`` or ``both`` (:mod:`edgedp.conventions`; old profiles' ``front`` is read
            as ``behind``); ``radii`` the layers' signed radii (L,) used when tuning.
        black_level, white_level, flat_field: input settings (None = defaults of ``edgedp fit``).
        captures: the captures it was tuned on.
        created: ISO 8601 UTC time (filled by :func:`save_profile` when empty).
    """

    device: str
    height: int
    width: int
    kernel_model: str
    butterworth: ButterworthParams
    radius_scale: float
    layers: int
    gd_width: float
    gd_scale: int
    gd_state: dict[str, Tensor]
    focus: str = BEHIND
    radii: tuple[float, ...] = ()
    asymmetry: float | None = None
    view_gain: tuple[float, ...] | None = None
    black_level: float | None = None
    white_level: float | None = None
    flat_field: tuple[str, str] | None = None
    captures: tuple[CaptureInfo, ...] = ()
    created: str = ""
    kernel_field: Any = None  # edgedp.physics.kernel_field.KernelField or None
    field_evidence: Any = None  # edgedp.fit.kernel_estimation.FieldEvidence pooled over the captures, or None

    def __post_init__(self) -> None:
        # Profiles from before edgedp.conventions say "front" for "behind".
        object.__setattr__(self, "focus", fit_focus(self.focus))

    def apply_to(self, config: Any, explicit_flags: Collection[str] = (), *, preset: str = "default") -> Any:
        """The :class:`~edgedp.fit.config.FitConfig` of a fit that starts from this profile.

        The device's kernel shape, radius per disparity and G_D layout replace ``config``'s; the
        kernel model, focus and layer count too unless the user gave them (``explicit_flags``
        names the flags given: ``kernel``, ``focus``, ``layers``, ``iterations``,
        ``warm_start``).  The blur RANGE still comes from the capture's disparity (a scene may
        hold more blur than the ones tuned on), spread over the profile's layer count so that
        G_D's weights fit.  Without ``iterations`` and ``warm_start``, stage 2 runs the warm
        step count of ``preset`` (:func:`edgedp.fit.options.warm_iterations`) on G_D's last layer
        only: its features come from this device's captures (tools/bench_warmstart.py measures
        it against a cold fit).

        >>> from edgedp.fit import FitConfig
        >>> from edgedp.physics import ButterworthParams
        >>> p = DeviceProfile("phone", 64, 96, "butterworth", ButterworthParams(), 1.25, 5, 0.25, 2, {})
        >>> c = p.apply_to(FitConfig(), {"layers"}, preset="fast")
        >>> c.radius_scale, c.layers, c.stage2_iterations, c.gd_train
        (1.25, None, 3, 'head')
        """
        from ..fit.options import warm_iterations

        given = set(explicit_flags)
        changes: dict[str, Any] = {
            "butterworth": self.butterworth,
            "radius_scale": self.radius_scale,
            "gd_width": self.gd_width,
            "gd_scale": self.gd_scale,
        }
        if "kernel" not in given:
            changes["kernel_model"] = self.kernel_model
        if "focus" not in given:
            changes["focus"] = self.focus
        if "layers" not in given:
            changes["layers"] = self.layers
        if "iterations" not in given and "warm_start" not in given:
            changes["stage2_iterations"] = warm_iterations(preset)
            changes["gd_train"] = "head"
        return dataclasses.replace(config, **changes)

    def fill_input(self, black_level: float | None, white_level: float | None,
                   flat_field: tuple[Path, Path] | None) -> dict[str, Any]:
        """The input settings after the profile's filled those not given: ``{"black_level",
        "white_level", "flat_field"}`` (the white level only together with the black level).

        >>> from edgedp.physics import ButterworthParams
        >>> p = DeviceProfile("phone", 64, 96, "butterworth", ButterworthParams(), 1.0, 5, 0.25, 2, {},
        ...                   black_level=1024.0, white_level=16383.0)
        >>> p.fill_input(None, None, None)
        {'black_level': 1024.0, 'white_level': 16383.0, 'flat_field': None}
        >>> p.fill_input(64.0, None, None)["white_level"] is None
        True
        """
        if black_level is None and self.black_level is not None:
            black_level = self.black_level
            if white_level is None:
                white_level = self.white_level
        if flat_field is None and self.flat_field is not None:
            flat_field = tuple(Path(p) for p in self.flat_field)
        return {"black_level": black_level, "white_level": white_level, "flat_field": flat_field}

    def view_gain_for(self, flat_field: Sequence[Path | str] | None, height: int, width: int) -> Tensor | None:
        """The right view's gain (H, W) for a capture read with ``flat_field``, or None when the
        profile has none or it does not apply: the gain is relative to the flat field the
        profile was tuned with (:func:`edgedp_runtime.instant.view_gain_applies`, the one
        definition of that rule, which the device runtime uses too)."""
        from edgedp_runtime.instant import view_gain_applies

        if self.view_gain is None or not view_gain_applies(flat_field, self.flat_field):
            return None
        check_compatible(self, height=int(height), width=int(width))
        gain = view_gain_map(self.view_gain, self.height, self.width)
        y0, x0 = (self.height - int(height)) // 2, (self.width - int(width)) // 2  # a centred crop (sensor_crop)
        return gain[y0:y0 + int(height), x0:x0 + int(width)].contiguous()


def _meta(p: DeviceProfile) -> dict[str, Any]:
    from .bundle import versions

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": p.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "device": p.device,
        "input": {
            "black_level": p.black_level,
            "white_level": p.white_level,
            "flat_field": None if p.flat_field is None else list(p.flat_field),
        },
        "kernel": {
            "model": p.kernel_model,
            "butterworth": dataclasses.asdict(p.butterworth),
            "radius_scale": p.radius_scale,
            "asymmetry": p.asymmetry,
            **({} if p.kernel_field is None else {"field": {"grid": list(p.kernel_field.grid), "source": p.kernel_field.source,
                                                            "size": p.kernel_field.size}}),
        },
        "view_gain": view_gain_entry(p.view_gain),
        "gd": {
            "layers": p.layers,
            "width": p.gd_width,
            "input_scale": p.gd_scale,
            "focus": p.focus,
            "radii": [float(r) for r in p.radii],
        },
        "sensor": {"height": p.height, "width": p.width},
        "captures": [dataclasses.asdict(c) for c in p.captures],
    }


def save_profile(profile: DeviceProfile, path: Path | str, *, overwrite: bool = False) -> Path:
    """Write ``profile`` to ``path`` (one file, see the module docstring).  Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"profile {path} is a folder (give a file name, e.g. {path / 'phone.profile'})")
    if path.exists() and not overwrite:
        raise OutputError(f"profile {path} exists (use overwrite / --force)")
    if path.parent and not path.parent.is_dir():
        raise OutputError(f"profile {path}: folder {path.parent} does not exist")
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int32),
        "meta": np.array(json.dumps(_meta(profile), sort_keys=True)),
    }
    for name, value in profile.gd_state.items():
        a = value.detach().cpu().numpy()
        arrays[f"gd/{name}"] = a.astype(np.float32) if a.dtype.kind == "f" else a
    if profile.kernel_field is not None:
        arrays[FIELD_MEMBER] = profile.kernel_field.pairs.detach().cpu().numpy().astype(np.float32)
    if profile.field_evidence is not None:
        for key, name in EVIDENCE_MEMBERS.items():
            arrays[name] = getattr(profile.field_evidence, key).detach().cpu().numpy().astype(np.float64)
    from ..io.atomic import atomic_file, recover_output

    recover_output(path)  # temporary files of a killed earlier write
    # All or nothing (issue 17): a kill or a full disk while writing leaves the old profile as it
    # was, never a truncated one; a file handle, so numpy does not append ".npz".
    try:
        with atomic_file(path) as fh:
            np.savez(fh, **arrays)
    except OSError as err:
        raise OutputError(f"profile {path}: cannot write ({err.strerror or err}); the old file, if any, is unchanged") from None
    return path


def _bad(path: Path, why: str) -> InputError:
    return InputError(" ".join(f"profile {path}: {why}".split()))


def load_profile(path: Path | str) -> DeviceProfile:
    """Read a profile; a missing, corrupt, foreign or other-version file is a one-line InputError."""
    path = Path(path)
    if not path.is_file():
        raise _bad(path, "no such file")
    try:
        npz = np.load(path, allow_pickle=False)
        files = list(npz.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise _bad(path, f"not a readable profile archive ({err.__class__.__name__})") from None
    try:
        with npz:
            def scalar(key: str):
                if key not in files:
                    raise _bad(path, f"entry '{key}' is missing (not an edgedp profile?)")
                v = npz[key]
                if v.shape != ():
                    raise _bad(path, f"entry '{key}' is not a scalar")
                return v.item()

            fmt = scalar("format")
            if fmt != FORMAT:
                raise _bad(path, f"format is {fmt!r}, expected {FORMAT!r}")
            version = scalar("format_version")
            if version != FORMAT_VERSION:
                raise _bad(path, f"format_version {version} is not supported (this edgedp reads {FORMAT_VERSION})")
            meta = json.loads(scalar("meta"))
            state = {k[3:]: torch.from_numpy(np.array(npz[k])) for k in files if k.startswith("gd/")}
            field_pairs = np.array(npz[FIELD_MEMBER]) if FIELD_MEMBER in files else None
            evidence = {key: np.array(npz[name]) for key, name in EVIDENCE_MEMBERS.items() if name in files}
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise _bad(path, f"corrupt ({err.__class__.__name__}: {err})") from None
    if not state:
        raise _bad(path, "has no G_D weights (gd/*)")
    try:
        k, g, s, i = meta["kernel"], meta["gd"], meta["sensor"], meta["input"]
        return DeviceProfile(
            device=str(meta["device"]),
            height=int(s["height"]),
            width=int(s["width"]),
            kernel_model=str(k["model"]),
            butterworth=ButterworthParams(**k["butterworth"]),
            radius_scale=float(k["radius_scale"]),
            asymmetry=None if k.get("asymmetry") is None else float(k["asymmetry"]),
            view_gain=_read_view_gain(meta.get("view_gain")),
            layers=int(g["layers"]),
            gd_width=float(g["width"]),
            gd_scale=int(g["input_scale"]),
            focus=str(g.get("focus", BEHIND)),
            radii=tuple(float(r) for r in g.get("radii", [])),
            gd_state=state,
            black_level=i.get("black_level"),
            white_level=i.get("white_level"),
            flat_field=None if i.get("flat_field") is None else tuple(i["flat_field"]),
            captures=tuple(CaptureInfo(**c) for c in meta.get("captures", [])),
            created=str(meta.get("created", "")),
            kernel_field=_read_field(field_pairs, k.get("field"), path),
            field_evidence=_read_evidence(evidence, path),
        )
    except InputError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise _bad(path, f"metadata is incomplete or invalid ({err.__class__.__name__}: {err})") from None


FIELD_MEMBER = "kernel_field/pairs"
"""The profile member holding an optional kernel field's pairs (Pr, Pc, 2, K, K) float32."""


EVIDENCE_MEMBERS = {
    "candidates": "kernel_field/evidence_candidates",
    "residual": "kernel_field/evidence_residual",
    "energy": "kernel_field/evidence_energy",
}
"""Optional members: the kernel-field evidence ``edgedp tune`` pooled over its captures
(:class:`edgedp.fit.kernel_estimation.FieldEvidence`: candidates (C, 2), residual and energy
(C, Pr, Pc), float64), the per-phone prior of each capture's own estimate."""


def _read_evidence(arrays: dict[str, np.ndarray], path: Path):
    """The profile's pooled :class:`~edgedp.fit.kernel_estimation.FieldEvidence` (None: none)."""
    if not arrays:
        return None
    from ..fit.kernel_estimation import FieldEvidence

    if set(arrays) != set(EVIDENCE_MEMBERS):
        raise _bad(path, "kernel field evidence is incomplete (" + ", ".join(EVIDENCE_MEMBERS.values()) + " come together)")
    cands, res, energy = arrays["candidates"], arrays["residual"], arrays["energy"]
    if cands.ndim != 2 or cands.shape[1] != 2 or res.ndim != 3 or res.shape != energy.shape or res.shape[0] != cands.shape[0] \
            or not all(np.isfinite(a).all() for a in (cands, res, energy)):
        raise _bad(path, f"kernel field evidence has shapes {cands.shape}, {res.shape}, {energy.shape}: expected (C, 2), (C, Pr, Pc) twice, finite")
    return FieldEvidence(*(torch.from_numpy(a.astype(np.float64)) for a in (cands, res, energy)))


def _read_field(pairs: np.ndarray | None, entry: Any, path: Path):
    """The profile's :class:`~edgedp.physics.kernel_field.KernelField` (None: the profile has none)."""
    if pairs is None and entry is None:
        return None
    from ..physics.kernel_field import KernelField

    if pairs is None or not isinstance(entry, dict):
        raise _bad(path, f"kernel field is incomplete ({FIELD_MEMBER} and meta kernel.field must come together)")
    grid = tuple(int(g) for g in entry.get("grid", ()))
    if pairs.ndim != 5 or pairs.shape[:3] != grid + (2,) or pairs.shape[-1] != pairs.shape[-2] or pairs.shape[-1] % 2 != 1 \
            or not np.isfinite(pairs).all():
        raise _bad(path, f"kernel field {FIELD_MEMBER} has shape {pairs.shape}, expected (Pr, Pc, 2, K, K) for grid {grid}, odd K, finite")
    return KernelField(torch.from_numpy(pairs.astype(np.float32)), str(entry.get("source", "profile")))




def view_gain_entry(coefficients: Sequence[float] | None) -> dict[str, Any] | None:
    """The JSON form of a view gain (profile meta and the profile export's sidecar):
    ``{"model": VIEW_GAIN_MODEL, "coefficients": [...]}``, or None."""
    if coefficients is None:
        return None
    return {"model": VIEW_GAIN_MODEL, "coefficients": [float(c) for c in coefficients]}


def _read_view_gain(entry: Any) -> tuple[float, ...] | None:
    if entry is None:
        return None
    if entry.get("model") != VIEW_GAIN_MODEL or len(entry.get("coefficients", [])) != VIEW_GAIN_TERMS:
        raise ValueError(f"view_gain must be model {VIEW_GAIN_MODEL!r} with {VIEW_GAIN_TERMS} coefficients")
    return tuple(float(c) for c in entry["coefficients"])


def check_compatible(profile: DeviceProfile, *, height: int, width: int, layers: int | None = None) -> None:
    """Raise a one-line InputError when a capture is not the profile's sensor size or a centred
    crop of it (:func:`edgedp_runtime.instant.sensor_crop`, the rule the instant path applies
    too) or (when given) does not match its layer count."""
    from edgedp_runtime.errors import RunnerError
    from edgedp_runtime.instant import sensor_crop

    try:
        sensor_crop((profile.height, profile.width), (height, width), profile.device)
    except RunnerError as err:
        raise InputError(str(err)) from None
    if layers is not None and layers != profile.layers:
        raise InputError(f"profile '{profile.device}' has a {profile.layers}-layer G_D, this fit uses {layers} layers")
