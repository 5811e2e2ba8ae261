"""The defocus CNN G_D (thesis Fig. 3.4).

``Conv(32) x3, Conv(64), pool, Conv(64) x3, Conv(128), pool, Conv(128) x3, Conv(256), pool,
Conv(L)``; 3x3 convolutions, LeakyReLU(0.2), 2x2 average pooling; the output (alpha logits) is at
1/8 of the input resolution.  ``width`` scales every hidden channel count (1.0 = the thesis).

Input: the DP pair ``(B, 2, h, w)`` [left, right], standardized by the pair's mean and standard
deviation (exposure-independent contrast).  ``h`` and ``w`` should be multiples of 8
(:func:`gd_input` pads by replication).  Output: ``(B, L, h/8, w/8)`` logits; alphas are their
sigmoid, with the bottom layer's alpha fixed to 1 by the caller (weights form a partition of unity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PADDING = "zeros"
"""Convolution padding of G_D: zeros (replicate padding costs an extra copy per layer on CPU)."""
GD_BLOCKS = ((32, 32, 32, 64), (64, 64, 64, 128), (128, 128, 128, 256))


class DefocusNet(nn.Module):
    """G_D: DP pair (B, 2, h, w) -> alpha logits (B, L, h/8, w/8)."""

    def __init__(self, layers: int, width: float = 1.0, in_channels: int = 2) -> None:
        super().__init__()
        self.layers = int(layers)
        self.width = float(width)
        self.in_channels = int(in_channels)
        mods: list[nn.Module] = []
        prev = in_channels
        for block in GD_BLOCKS:
            for n in block:
                c = max(4, int(round(n * width)))
                mods += [nn.Conv2d(prev, c, 3, padding=1, padding_mode=PADDING), nn.LeakyReLU(0.2)]
                prev = c
            mods.append(nn.AvgPool2d(2))
        self.features = nn.Sequential(*mods)
        self.head = nn.Conv2d(prev, layers, 3, padding=1, padding_mode=PADDING)
        self.reset_head()

    def reset_head(self) -> None:
        """Start from uniform compositing weights: with the over operator (layer L-1 on top) and
        alpha_i = 1 / (i + 1), every layer gets weight 1 / L.  Zero weights in the head make the
        initial output exactly that, whatever the features."""
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            a = 1.0 / torch.arange(1, self.layers + 1, dtype=torch.float64)
            a = a.clamp(max=1 - 1e-4)
            self.head.bias.copy_(torch.log(a / (1 - a)).to(self.head.bias.dtype))

    def forward(self, pair: Tensor) -> Tensor:
        return self.head(self.features(pair))

    def config(self) -> dict:
        return {"layers": self.layers, "width": self.width, "in_channels": self.in_channels, "architecture": "thesis-fig-3.4"}


def build_gd(config: dict) -> DefocusNet:
    """Rebuild G_D from :meth:`DefocusNet.config`."""
    return DefocusNet(int(config["layers"]), float(config.get("width", 1.0)), int(config.get("in_channels", 2)))


def gd_input(views: Tensor, scale: int) -> Tensor:
    """G_D's input from a DP pair (B, 2, H, W): replicate-padded to multiples of ``8 * scale`` (so
    the output grid covers every pixel), area down-scaled by ``scale``, normalized by the pair's
    mean and standard deviation (zero mean, unit variance: the DP cue is contrast, not level).
    Returns (B, 2, ceil(H / (8 s)) * 8, ceil(W / (8 s)) * 8)."""
    h, w = views.shape[-2:]
    m = 8 * scale
    ph, pw = (-h) % m, (-w) % m
    x = F.pad(views, (0, pw, 0, ph), mode="replicate") if (ph or pw) else views
    x = F.avg_pool2d(x, scale) if scale > 1 else x
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def upsample_logits(logits: Tensor, size: tuple[int, int], scale: int, block: int = 1) -> Tensor:
    """G_D's low-resolution logits (B, L, h/8, w/8) -> (B, L, H, W) by bilinear up-sampling.

    The logits grid covers the padded, down-scaled input: cell ``j`` spans full-resolution pixels
    ``[8 s j, 8 s (j + 1))``; it is up-sampled to the padded full size and cropped.  With
    ``block > 1`` (a divisor of ``8 s``) the same up-sampling is evaluated only at the centres of
    ``block x block`` pixel blocks and ``size`` is the block grid's.
    """
    h, w = size
    factor = 8 * scale // block
    up = F.interpolate(logits, size=(logits.shape[-2] * factor, logits.shape[-1] * factor), mode="bilinear", align_corners=False)
    return up[..., :h, :w]


def upsample_logits_region(logits: Tensor, scale: int, rows: tuple[int, int], cols: tuple[int, int]) -> Tensor:
    """Rows ``rows[0]:rows[1]`` and columns ``cols[0]:cols[1]`` of ``upsample_logits(logits,
    (H, W), scale)`` without up-sampling the whole frame: (B, L, h/8, w/8) -> (B, L, r1 - r0,
    c1 - c0), the same values to float rounding (each output pixel interpolates the same four
    cells with the same weights; their fractional positions are rounded differently, ~1e-7).  The cells up-sampled carry one cell of context on each side, so that the border
    clamp of the bilinear interpolation only acts at the frame's own borders."""
    factor = 8 * scale
    (r0, r1), (c0, c1) = rows, cols
    hl, wl = logits.shape[-2:]
    a0, a1 = max(0, r0 // factor - 1), min(hl, -(-r1 // factor) + 1)
    b0, b1 = max(0, c0 // factor - 1), min(wl, -(-c1 // factor) + 1)
    cells = logits[..., a0:a1, b0:b1]
    up = F.interpolate(cells, size=((a1 - a0) * factor, (b1 - b0) * factor), mode="bilinear", align_corners=False)
    return up[..., r0 - a0 * factor : r1 - a0 * factor, c0 - b0 * factor : c1 - b0 * factor]


def alphas_from_logits(logits: Tensor) -> Tensor:
    """Sigmoid alphas with the bottom layer (index 0) opaque, so over-compositing weights sum to 1."""
    alphas = torch.sigmoid(logits)
    return torch.cat([torch.ones_like(alphas[:, :1]), alphas[:, 1:]], dim=1)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
