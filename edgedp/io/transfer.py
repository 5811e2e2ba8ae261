"""Colour transfer functions: the sRGB curve of IEC 61966-2-1 and which one a file uses.

The blur model (METHOD.md, Eq. 2) holds in linear light: a defocused point spreads its *energy*
over the kernel.  Camera JPEGs, Canon DPDD pairs and Digital Photo Professional's TIFF exports
store sRGB-encoded values, so edgedp decodes them to linear before the fit and encodes its image
outputs back (the defocus map is geometry and is not affected).

The curve is the exact piecewise one of IEC 61966-2-1 (not a 2.2 power law), on values in
[0, 1]:

* decode (encoded ``c`` -> linear ``l``): ``l = c / 12.92`` for ``c <= 0.04045``, else
  ``((c + 0.055) / 1.055) ** 2.4``;
* encode (linear ``l`` -> encoded ``c``): ``c = 12.92 l`` for ``l <= 0.0031308``, else
  ``1.055 l ** (1 / 2.4) - 0.055``.

Values outside [0, 1] (raw noise, overshoot of a restoration) are mirrored through the origin
(``f(-x) = -f(x)``) so decode and encode stay exact inverses and keep the sign; callers clip when
writing.  Functions take numpy arrays or torch tensors and return the same kind, dtype and
device.

Transfer names (``--transfer``): :data:`LINEAR`, :data:`SRGB`, and :data:`AUTO` (decided per
file by :func:`edgedp.io.images.detect_transfer`).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from ..errors import InputError

LINEAR = "linear"
SRGB = "srgb"
AUTO = "auto"
#: What ``--transfer`` accepts.
TRANSFERS = (LINEAR, SRGB, AUTO)

#: IEC 61966-2-1 constants: the encoded and the linear value where the curve turns from the
#: straight segment to the power segment, the slope of the straight segment, the offset and the
#: exponent of the power segment.
ENCODED_KNEE = 0.04045
LINEAR_KNEE = 0.0031308
SLOPE = 12.92
OFFSET = 0.055
GAMMA = 2.4

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def srgb_to_linear(encoded: Array) -> Array:
    """sRGB-encoded values -> linear light (IEC 61966-2-1 decode, odd extension past 0)."""
    if isinstance(encoded, torch.Tensor):
        magnitude = encoded.abs()
        power = ((magnitude + OFFSET) / (1 + OFFSET)) ** GAMMA
        return torch.sign(encoded) * torch.where(magnitude <= ENCODED_KNEE, magnitude / SLOPE, power)
    array = np.asarray(encoded)
    magnitude = np.abs(array)
    power = ((magnitude + OFFSET) / (1 + OFFSET)) ** GAMMA
    return (np.sign(array) * np.where(magnitude <= ENCODED_KNEE, magnitude / SLOPE, power)).astype(array.dtype, copy=False)


def linear_to_srgb(linear: Array) -> Array:
    """Linear light -> sRGB-encoded values (IEC 61966-2-1 encode, odd extension past 0)."""
    if isinstance(linear, torch.Tensor):
        magnitude = linear.abs()
        power = (1 + OFFSET) * magnitude.clamp_min(0) ** (1 / GAMMA) - OFFSET
        return torch.sign(linear) * torch.where(magnitude <= LINEAR_KNEE, magnitude * SLOPE, power)
    array = np.asarray(linear)
    magnitude = np.abs(array)
    power = (1 + OFFSET) * magnitude ** (1 / GAMMA) - OFFSET
    return (np.sign(array) * np.where(magnitude <= LINEAR_KNEE, magnitude * SLOPE, power)).astype(array.dtype, copy=False)


def check_transfer(name: str, what: str = "--transfer") -> str:
    """``name`` lower-cased if it is one of :data:`TRANSFERS`; a one-line InputError naming
    ``what`` otherwise."""
    value = str(name).strip().lower()
    if value not in TRANSFERS:
        raise InputError(f"invalid {what} '{name}': choose {', '.join(TRANSFERS)}")
    return value
