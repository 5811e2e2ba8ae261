"""Pictures of a fit for people: colour-mapped defocus maps with a legend, side-by-side previews.

No matplotlib: the colour maps are small tables interpolated to 256 entries.

* Non-negative maps (front-only scenes: blur only behind the focal plane) use a viridis-like
  sequential map (dark blue-violet = ``vmin`` ... yellow = ``vmax``; perceptually ordered).
* Signed maps (some radius < 0) use a diverging blue - grey - red map (Moreland's "cool to warm")
  **centred at 0** with a symmetric scale ``[-m, m]``, ``m = max(|vmin|, |vmax|)``: a colour means
  the same ``|r|`` on both sides; red is behind the focal plane (``r > 0``, the thesis' "front
  focus"), blue in front of it, light grey in focus.

All functions return ``uint8`` RGB arrays ``(H, W, 3)`` (write them with
:func:`edgedp.io.writers.write_png8`).  The signed blur radius follows CONVENTIONS.md: pixels, ``> 0``
behind the focal plane.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from torch import Tensor

__all__ = [
    "DEFOCUS_TITLE",
    "DIVERGING_CENTRE",
    "colorize_defocus",
    "defocus_figure",
    "defocus_range",
    "display_gamma",
    "preview_image",
]

DEFOCUS_TITLE = "blur radius (px), + behind focal plane"

# viridis sampled at 16 evenly spaced points (viridisLite / matplotlib).
_VIRIDIS = np.array(
    [
        (68, 1, 84), (72, 26, 108), (71, 47, 125), (65, 68, 135), (57, 86, 140), (49, 104, 142),
        (42, 120, 142), (35, 136, 142), (31, 152, 139), (34, 168, 132), (53, 183, 121),
        (84, 197, 104), (122, 209, 81), (165, 219, 54), (210, 226, 27), (253, 231, 37),
    ],
    dtype=np.float64,
)
# Moreland's "cool to warm" diverging map sampled at 9 evenly spaced points; centre light grey.
_COOLWARM = np.array(
    [
        (59, 76, 192), (98, 130, 234), (141, 176, 254), (184, 208, 249), (221, 221, 221),
        (245, 196, 173), (244, 154, 123), (222, 96, 77), (180, 4, 38),
    ],
    dtype=np.float64,
)
#: Colour of 0 (in focus) in the diverging map.
DIVERGING_CENTRE = (221, 221, 221)
#: Colour of non-finite values.
NAN_COLOUR = (0, 0, 0)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
#: Odd, so that the centre of the diverging map (t = 0.5) is an exact table entry.
LUT_SIZE = 257


def _lut(table: np.ndarray) -> np.ndarray:
    """Control points (N, 3) -> a (LUT_SIZE, 3) uint8 table (linear interpolation in RGB)."""
    x = np.linspace(0.0, 1.0, len(table))
    t = np.linspace(0.0, 1.0, LUT_SIZE)
    return np.stack([np.rint(np.interp(t, x, table[:, c])) for c in range(3)], axis=1).astype(np.uint8)


_VIRIDIS_LUT = _lut(_VIRIDIS)
_COOLWARM_LUT = _lut(_COOLWARM)


def _to_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x)


def defocus_range(
    defocus: Tensor | np.ndarray, vmin: float | None = None, vmax: float | None = None
) -> tuple[float, float, bool]:
    """The value range a defocus map is shown with: ``(lo, hi, diverging)``.

    Defaults include 0 (in focus): ``lo = min(0, min(defocus))``, ``hi = max(0, max(defocus))``
    over the finite values.  ``diverging`` is ``lo < 0``.
    """
    d = _to_numpy(defocus).astype(np.float64)
    finite = d[np.isfinite(d)]
    lo = float(vmin) if vmin is not None else min(0.0, float(finite.min()) if finite.size else 0.0)
    hi = float(vmax) if vmax is not None else max(0.0, float(finite.max()) if finite.size else 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"vmin/vmax must be finite, got {lo}, {hi}")
    if hi <= lo:
        if vmin is not None and vmax is not None:
            raise ValueError(f"vmin must be below vmax, got {vmin} and {vmax}")
        hi = lo + 1.0  # a constant map
    return lo, hi, lo < 0.0


def colorize_defocus(
    defocus: Tensor | np.ndarray, *, vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """Colour-map a signed defocus map ``(H, W)`` (px) -> ``uint8`` RGB ``(H, W, 3)``.

    Range from :func:`defocus_range` (values outside are clipped).  Non-negative range: viridis,
    ``vmin`` -> first colour, ``vmax`` -> last.  Signed range: the diverging map with 0 at its
    centre (:data:`DIVERGING_CENTRE`) and ``+-max(|vmin|, |vmax|)`` at its ends.  NaN/inf -> black.
    """
    d = _to_numpy(defocus).astype(np.float64)
    if d.ndim != 2:
        raise ValueError(f"defocus must be (H, W), got shape {d.shape}")
    lo, hi, diverging = defocus_range(d, vmin, vmax)
    finite = np.isfinite(d)
    v = np.clip(np.where(finite, d, 0.0), lo, hi)
    if diverging:
        m = max(abs(lo), abs(hi))
        t, lut = 0.5 + 0.5 * v / m, _COOLWARM_LUT
    else:
        t, lut = (v - lo) / (hi - lo), _VIRIDIS_LUT
    rgb = lut[np.rint(t * (LUT_SIZE - 1)).astype(np.intp)]
    rgb[~finite] = NAN_COLOUR
    return np.ascontiguousarray(rgb)


def _nice_ticks(lo: float, hi: float, max_ticks: int) -> tuple[list[float], int]:
    """Round tick values in [lo, hi] (steps 1, 2, 2.5, 5 x 10^k), at most ``max_ticks`` of them
    (at least 2), and the number of decimals to print them with."""
    max_ticks = max(2, max_ticks)
    span = hi - lo
    for exponent in range(math.floor(math.log10(span / max_ticks)) - 1, math.ceil(math.log10(span)) + 2):
        for mantissa in (1.0, 2.0, 2.5, 5.0):
            step = mantissa * 10.0**exponent
            first = math.ceil(lo / step - 1e-9)
            last = math.floor(hi / step + 1e-9)
            if 2 <= last - first + 1 <= max_ticks:
                decimals = max(0, -math.floor(math.log10(step) + 1e-9) + (1 if mantissa == 2.5 else 0))
                return [round(k * step, 10) for k in range(first, last + 1)], decimals
    return [lo, hi], 2


def _label(value: float, decimals: int, signed: bool) -> str:
    if abs(value) < 0.5 * 10.0**-decimals:
        return "0"
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def _text_size(text: str, scale: float, thickness: int) -> tuple[int, int, int]:
    (w, h), base = cv2.getTextSize(text, _FONT, scale, thickness)
    return w, h, base


def defocus_figure(
    defocus: Tensor | np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str = DEFOCUS_TITLE,
) -> np.ndarray:
    """The colour-mapped defocus map with a legend: ``uint8`` RGB ``(H', W', 3)``.

    Layout: the title on top (default "blur radius (px), + behind focal plane"), the map
    (:func:`colorize_defocus`) below it, a colour bar of the map's height on its right with tick
    labels in px.  Maps under 240 rows are enlarged by an integer factor (nearest neighbour) so
    the text stays legible; the figure is always wider than the map.
    """
    d = _to_numpy(defocus).astype(np.float64)
    lo, hi, diverging = defocus_range(d, vmin, vmax)
    image = colorize_defocus(d, vmin=lo, vmax=hi)
    h, w = image.shape[:2]
    if h < 240:
        factor = math.ceil(240 / h)
        image = cv2.resize(image, (w * factor, h * factor), interpolation=cv2.INTER_NEAREST)
        h, w = image.shape[:2]

    scale = float(np.clip(h / 700.0, 0.45, 1.6))
    thick = max(1, round(scale * 1.3))
    pad = max(6, round(12 * scale))
    _, text_h, base = _text_size("0", scale, thick)
    bar_w = max(12, h // 25)
    tick_len = max(4, bar_w // 3)

    ticks, decimals = _nice_ticks(lo, hi, max(2, int(h / (3.0 * text_h))))
    labels = [_label(t, decimals, diverging) for t in ticks]
    label_w = max(_text_size(s, scale, thick)[0] for s in labels)
    title_w, title_h, title_base = _text_size(title, scale, thick)

    top = pad + title_h + title_base + pad
    bottom = pad + text_h  # room for the lowest label's lower half
    legend_x = pad + w + pad
    width = max(legend_x + bar_w + tick_len + pad // 2 + label_w + pad, title_w + 2 * pad)
    height = top + h + bottom
    canvas = np.full((height, width, 3), 255, np.uint8)
    canvas[top : top + h, pad : pad + w] = image

    # Colour bar: hi at the top, lo at the bottom, coloured exactly like the map.
    column = np.linspace(hi, lo, h)[:, None]
    bar = colorize_defocus(np.repeat(column, bar_w, axis=1), vmin=lo, vmax=hi)
    canvas[top : top + h, legend_x : legend_x + bar_w] = bar
    cv2.rectangle(canvas, (legend_x - 1, top - 1), (legend_x + bar_w, top + h), (0, 0, 0), 1)
    for value, text in zip(ticks, labels):
        y = top + int(round((hi - value) / (hi - lo) * (h - 1)))
        x0 = legend_x + bar_w
        cv2.line(canvas, (x0, y), (x0 + tick_len, y), (0, 0, 0), max(1, thick // 2))
        cv2.putText(canvas, text, (x0 + tick_len + pad // 2, y + text_h // 2), _FONT, scale, (0, 0, 0), thick, cv2.LINE_AA)
    cv2.putText(canvas, title, (pad, pad + title_h), _FONT, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return canvas


def display_gamma(image: Tensor | np.ndarray, scale: float) -> np.ndarray:
    """Linear ``(C, H, W)`` image -> display ``uint8`` RGB ``(H, W, 3)``: ``(x / scale)`` clipped
    to [0, 1], then gamma ``1 / 2.2``; gray (C = 1) is repeated to three channels."""
    x = _to_numpy(image).astype(np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"image must be (C, H, W) with C in (1, 3), got shape {x.shape}")
    x = np.nan_to_num(x, nan=0.0)
    y = np.clip(x / scale, 0.0, 1.0) ** (1.0 / 2.2)
    rgb = np.rint(np.moveaxis(y, 0, -1) * 255.0).astype(np.uint8)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return np.ascontiguousarray(rgb)


def preview_image(
    input: Tensor | np.ndarray,
    allinfocus: Tensor | np.ndarray,
    defocus: Tensor | np.ndarray,
    *,
    max_width: int = 2000,
    percentile: float = 99.5,
    labels: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Side by side ``input | all-in-focus | defocus`` as ``uint8`` RGB.

    ``input`` and ``allinfocus`` are linear ``(C, H, W)`` (C = 1 or 3) on the same scale; both
    are divided by the ``percentile`` (99.5 %) of the input, so dark raw captures are visible and
    the two compare directly, then gamma-encoded (1/2.2).  The defocus map ``(H, W)`` is coloured
    by :func:`colorize_defocus` (``vmin``/``vmax`` as there).  Panels are separated by white gaps; the whole is scaled down
    (area averaging) to at most ``max_width`` pixels wide, and labelled on a strip on top when
    the panels are wide enough for the text.
    """
    x = _to_numpy(input)
    finite = x[np.isfinite(x)]
    scale = float(np.percentile(finite, percentile)) if finite.size else 1.0
    if not scale > 0:
        scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    panels = [display_gamma(input, scale), display_gamma(allinfocus, scale), colorize_defocus(defocus, vmin=vmin, vmax=vmax)]
    h, w = panels[0].shape[:2]
    for p in panels[1:]:
        if p.shape[:2] != (h, w):
            raise ValueError(f"preview panels differ in size: {[q.shape[:2] for q in panels]}")
    gap = max(2, w // 100)
    white = np.full((h, gap, 3), 255, np.uint8)
    row = np.concatenate([panels[0], white, panels[1], white, panels[2]], axis=1)
    if row.shape[1] > max_width:
        f = max_width / row.shape[1]
        size = (max_width, max(1, round(row.shape[0] * f)))
        row = cv2.resize(row, size, interpolation=cv2.INTER_AREA)
    if not labels:
        return np.ascontiguousarray(row)
    panel_w = (row.shape[1] - 2 * round(gap * row.shape[1] / (3 * w + 2 * gap))) // 3
    scale_t = float(np.clip(row.shape[0] / 900.0, 0.4, 1.2))
    thick = max(1, round(scale_t * 1.6))
    names = ("input", "all-in-focus", "defocus (px)")
    sizes = [_text_size(n, scale_t, thick) for n in names]
    if max(s[0] for s in sizes) + 8 > panel_w:
        return np.ascontiguousarray(row)
    strip_h = max(s[1] + s[2] for s in sizes) + 10
    strip = np.full((strip_h, row.shape[1], 3), 255, np.uint8)
    step = row.shape[1] / 3
    for i, (name, (tw, th, _)) in enumerate(zip(names, sizes)):
        cv2.putText(strip, name, (int(i * step + 4), 5 + th), _FONT, scale_t, (0, 0, 0), thick, cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate([strip, row], axis=0))
