"""The options of a fit as values -> library settings: presets, warm-start step counts, the
parsing of ``--iterations`` / ``--patches`` / ``--channel``, the flag -> :class:`~edgedp.fit.config.FitConfig`
mapping and the input :class:`~edgedp.io.images.ReadOptions`.

The ONE place these rules live: ``edgedp fit``, ``edgedp tune``, ``edgedp batch`` (through
:mod:`edgedp.run.capture`) and the Python API all call them.  Every bad value is a one-line
:class:`~edgedp.errors.InputError` naming its flag.

>>> from edgedp.fit import FitConfig
>>> presets()["default"] == FitConfig()
True
>>> parse_iterations("300,60"), parse_patches("6x8"), warm_iterations("fast")
((300, 60), (6, 8), 3)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from ..errors import InputError


def presets() -> dict:
    """``--preset`` name -> :class:`edgedp.fit.config.FitConfig`: the ONE place these numbers live.

    ``default`` (exactly ``FitConfig()``): the capture's kernel field, Stage 1, Stage 2 with 60
    steps, the TV step (3 splitting steps with a field, 6 without); ``fast``: the same with 20
    Stage 2 steps; ``best``: Stage 2 with 150 steps and Stage 3 (learned kernels, no field).  Measured on
    the Pixel 4 dev scenes (tools/bench_pixel.py, README "Kernel field: cost"): with the field,
    G_D adds +0.03 to +0.15 dB over the per-pixel likelihood and 60 steps score as 100 (mean
    within 0.01 dB; 001 +0.10, 007 -0.08) in 40 % less time, while Stage 2 is 0.8 s a step at
    1008 x 1344 on 2 cores, most of the fit's time.
    """
    from .config import FitConfig

    return {
        "fast": FitConfig(stage2_iterations=20),
        "default": FitConfig(),  # FitConfig()'s defaults ARE the default preset (a test says so)
        "best": FitConfig(stage2_iterations=150, stage3_iterations=60),
    }


#: Stage 2 steps of a WARM fit (G_D from a device profile) per preset, used by ``edgedp fit
#: --profile`` when ``--iterations`` is not given.  Measured with tools/bench_warmstart.py
#: (leave-one-out on the Pixel 4 dev scenes): see README, "Device profiles".
WARM_STAGE2_ITERATIONS = {"fast": 3, "default": 5, "best": 10}


def warm_iterations(preset: str) -> int:
    """Stage 2 steps of a fit warm-started from a device profile (``--preset`` name)."""
    return WARM_STAGE2_ITERATIONS[preset]


def preset_config(name: str):
    """The :class:`edgedp.fit.config.FitConfig` of ``--preset name``; InputError for an unknown name."""
    table = presets()
    if name not in table:
        raise InputError(f"unknown --preset '{name}' (choose {', '.join(table)})")
    return table[name]


#: Smallest H and W a fit accepts (G_D works at 1/16 of the full resolution).
MIN_FIT_SIZE = 16

_ITERATIONS_RE = re.compile(r"^\s*(\d+)\s*(?:,\s*(\d+)\s*)?$")
_GRID_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
_CHANNEL_NAMES = {"red": 0, "green": 1, "blue": 2}


def parse_iterations(text: str) -> tuple[int, int | None]:
    """``"S2"`` or ``"S2,S3"`` -> (stage 2 steps >= 0, stage 3 steps >= 0 or None).

    Stage 2 with 0 steps keeps G_D as it starts (a profile's or ``--warm-start`` weights; fused
    with the per-pixel likelihood as always)."""
    match = _ITERATIONS_RE.match(str(text))
    if match is None:
        raise InputError(
            f"invalid --iterations '{text}': expected S2 or S2,S3 (optimizer steps of stage 2 and stage 3, >= 0), e.g. 300,60"
        )
    return int(match.group(1)), None if match.group(2) is None else int(match.group(2))


def parse_patches(text: str) -> tuple[int, int]:
    """``"RxC"`` -> (rows, cols), both >= 1."""
    match = _GRID_RE.match(str(text))
    if match is None or min(int(match.group(1)), int(match.group(2))) < 1:
        raise InputError(f"invalid --patches '{text}': expected RxC (rows x columns of the kernel grid), e.g. 6x8")
    return int(match.group(1)), int(match.group(2))


def parse_channel(text: str, channels: int) -> str | int:
    """``--channel`` for an input of ``channels`` channels -> ``"luminance"`` or a channel index."""
    value = str(text).strip().lower()
    if value == "luminance":
        return "luminance"
    if value in _CHANNEL_NAMES:
        index = _CHANNEL_NAMES[value]
    elif value.isdigit():
        index = int(value)
    else:
        raise InputError(f"invalid --channel '{text}': expected luminance, green or a channel number 0..2")
    if channels == 1:
        if index != 0:
            raise InputError(f"--channel {text}: the input has one channel (only RGB input has a choice)")
        return "luminance"
    if not 0 <= index < channels:
        raise InputError(f"--channel {text}: the input has channels 0..{channels - 1}")
    return index


def fit_config_from_options(
    preset: str = "default",
    *,
    iterations: str | None = None,
    layers: int | None = None,
    max_kernel: int | None = None,
    max_radius: float | None = None,
    patches: str | None = None,
    focus: str | None = None,
    kernel: str | None = None,
    device: str | None = None,
    seed: int | None = None,
):
    """The FitConfig of ``edgedp fit``: the preset, then each given flag (``dataclasses.replace``).

    Raises:
        InputError: a bad flag value, with a one-line message naming the flag.
    """
    import dataclasses
    import math

    config = preset_config(preset)
    changes: dict = {}
    if iterations is not None:
        s2, s3 = parse_iterations(iterations)
        changes["stage2_iterations"] = s2
        if s3 is not None:
            changes["stage3_iterations"] = s3
    if layers is not None:
        if layers < 2:
            raise InputError(f"--layers {layers}: need at least 2 layers")
        changes["layers"] = int(layers)
    if max_kernel is not None and max_radius is not None:
        raise InputError("--max-kernel and --max-radius both set the blur range: give one of them")
    if max_kernel is not None:
        if max_kernel < 3 or max_kernel % 2 == 0:
            raise InputError(f"--max-kernel {max_kernel}: the kernel size must be odd and at least 3 (e.g. 35)")
        changes["max_radius"] = (max_kernel - 1) / 2
    if max_radius is not None:
        if not (math.isfinite(max_radius) and max_radius > 0):
            raise InputError(f"--max-radius {max_radius}: must be a positive number of pixels")
        changes["max_radius"] = float(max_radius)
    if patches is not None:
        changes["patches"] = parse_patches(patches)
    if focus is not None:
        changes["focus"] = focus
    if kernel is not None:
        changes["kernel_model"] = kernel
    if device is not None:
        changes["device"] = device
    if seed is not None:
        if seed < 0:
            raise InputError(f"--seed {seed}: must be >= 0")
        changes["seed"] = int(seed)
    return dataclasses.replace(config, **changes)


def check_device(device: str) -> None:
    """InputError when ``device`` is ``cuda`` and this torch has no usable CUDA device."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
            raise InputError(f"--device cuda: CUDA is not available ({why}, torch {torch.__version__}); use --device cpu")


def read_options(
    black_level: Optional[float],
    white_level: Optional[float],
    flat_field: Optional[tuple[Path, Path]],
    crop: Optional[str],
    min_size: int = 1,
    transfer: str = "auto",
):
    """Build :class:`edgedp.io.images.ReadOptions` from the shared CLI input options."""
    from ..io.images import ReadOptions, parse_size

    if flat_field is not None and any(p is None for p in flat_field):
        flat_field = None
    if white_level is not None and black_level is None:
        raise InputError("--white-level needs --black-level (raw mode)")
    return ReadOptions(
        black_level=black_level,
        white_level=white_level,
        flat_field=tuple(flat_field) if flat_field else None,
        crop=parse_size(crop, what="--crop") if crop else None,
        min_size=min_size,
        transfer=transfer,
    )


def camera_read_options(
    camera: Optional[str],
    black_level: Optional[float],
    white_level: Optional[float],
    flat_field: Optional[tuple[Path, Path]],
    crop: Optional[str],
    transfer: Optional[str],
    min_size: int = 1,
):
    """:func:`read_options` after ``--camera`` filled the input options not given."""
    from ..io.cameras import apply_camera
    from ..io.transfer import check_transfer

    if transfer is not None:
        check_transfer(transfer)
    chosen = apply_camera(camera, black_level=black_level, white_level=white_level, transfer=transfer)
    return read_options(chosen["black_level"], chosen["white_level"], flat_field, crop, min_size=min_size,
                        transfer=chosen["transfer"])
