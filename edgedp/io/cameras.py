"""Camera presets (``--camera NAME``): the input options of a known device's DP files.

A preset fills the input options a user would otherwise type (black level, white level,
transfer); an option given explicitly on the command line wins over the preset's value.  Each
preset names where its numbers come from; ``edgedp info --camera NAME`` shows what was used.

Levels follow :class:`edgedp.io.images.ReadOptions`: ``v = (raw - black) / white`` (``white`` is the
divisor after black subtraction).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class CameraPreset:
    """Input settings of one device's DP files.

    Attributes:
        name: what ``--camera`` takes.
        description: the device and file kind, one line.
        black_level, white_level: raw levels (``None``: not raw data).
        transfer: ``linear``, ``srgb`` or ``auto`` (``--transfer``).
        source: where the numbers come from (a document a user can check).
    """

    name: str
    description: str
    black_level: float | None
    white_level: float | None
    transfer: str
    source: str


#: The presets ``--camera`` knows, by name.
CAMERAS: dict[str, CameraPreset] = {
    preset.name: preset
    for preset in (
        CameraPreset(
            name="pixel4",
            description="Google Pixel 4 DP views as 16-bit PNG holding 14-bit data (the Pixel 4 dataset of Xin et al., ICCV 2021)",
            black_level=1024.0,
            white_level=16383.0,
            transfer="linear",
            source="evaluation protocol of the Pixel 4 data (shared/data/pixel4/README.md, step 1: v = (raw - 1024) / 16383)",
        ),
        CameraPreset(
            name="pdcapture",
            description="Google's dual-pixel capture app (Pixel 3/4): *_left.pgm / *_right.pgm, 16-bit, 10-bit data scaled to 65535",
            # The app records white level 1023 and multiplies by 65535 / 1023; the black level,
            # "typically around 64 before scaling and 4096 after scaling", so white maps to 1.
            black_level=4096.0,
            white_level=65535.0 - 4096.0,
            transfer="linear",
            source=(
                "google-research/google-research dual_pixels/README.md, 'Information about saved data' "
                "(and PdCaptureActivity.java: DP_WHITE_LEVEL 1023, TARGET_WHITE_LEVEL 65535); the exact black "
                "level of a shot is SENSOR_DYNAMIC_BLACK_LEVEL in its CaptureResult"
            ),
        ),
    )
}


def camera_preset(name: str) -> CameraPreset:
    """The preset called ``name`` (case-insensitive); a one-line InputError for an unknown one."""
    key = str(name).strip().lower()
    if key not in CAMERAS:
        raise InputError(f"unknown --camera '{name}' (known: {', '.join(CAMERAS)})")
    return CAMERAS[key]


def apply_camera(
    name: str | None,
    *,
    black_level: float | None,
    white_level: float | None,
    transfer: str | None,
) -> dict:
    """The input options after ``--camera name``: each given value wins over the preset's.

    Returns ``{"black_level", "white_level", "transfer"}`` (``transfer`` defaults to ``auto``
    when neither the flag nor a preset sets it).
    """
    chosen = {"black_level": black_level, "white_level": white_level, "transfer": transfer}
    if name is not None:
        preset = camera_preset(name)
        for key in chosen:
            if chosen[key] is None:
                chosen[key] = getattr(preset, key)
    if chosen["transfer"] is None:
        chosen["transfer"] = "auto"
    return chosen


def preset_dict(name: str) -> dict:
    """A preset as a plain dict (report.json, manifest)."""
    return dataclasses.asdict(camera_preset(name))
