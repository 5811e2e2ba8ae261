"""The kernel generators of Stage 3 (METHOD.md "Stage 3", thesis Eq. 12): per view and side of the focal
plane, a CNN G_F maps a trainable random input ``Z (P, 4K, 4K)`` to ``P`` softmax kernels ``K x K`` (one per
patch).  Their fitting (warm start, gauge, the kernel steps) is :mod:`edgedp.fit.stage3`, which describes
the design and the measured costs of the widths.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["KernelGenerator", "KernelGenerators"]


MIN_WIDTH = 16
"""Fewest channels of a generator's first hidden layers (twice that for the last two): with
few patches the P-scaled widths would leave too small a network to fit the warm start."""


class KernelGenerator(nn.Module):
    """G_F: trainable input ``Z (1, P, 4K, 4K)`` -> ``P`` softmax kernels ``(P, K, K)``.

    ``Conv(c1, s2) - Conv(c1) - Conv(c2, s2) - Conv(c2) - Conv(P)``, 3x3, padding 1, LeakyReLU(0.2)
    between; ``c1 = max(P, 16, round(4 P width))``, ``c2 = max(P, 32, round(16 P width))``.  The spatial size
    goes ``4K -> 2K -> K``.  Parameters are drawn from the global torch RNG (seed it around the
    construction, see :class:`KernelGenerators`).
    """

    def __init__(self, patches: int, kernel_size: int, width: float = 0.25) -> None:
        super().__init__()
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        p, k = int(patches), int(kernel_size)
        c1 = max(p, MIN_WIDTH, int(round(4 * p * width)))
        c2 = max(p, 2 * MIN_WIDTH, int(round(16 * p * width)))
        self.patches, self.kernel_size = p, k
        # DIP-style input: small uniform noise (Ulyanov et al.), trained jointly (thesis).
        self.z = nn.Parameter(torch.rand(1, p, 4 * k, 4 * k) * 0.1)
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        self.net = nn.Sequential(
            nn.Conv2d(p, c1, 3, 2, 1), act(),
            nn.Conv2d(c1, c1, 3, 1, 1), act(),
            nn.Conv2d(c1, c2, 3, 2, 1), act(),
            nn.Conv2d(c2, c2, 3, 1, 1), act(),
            nn.Conv2d(c2, p, 3, 1, 1),
        )  # fmt: skip

    def forward(self) -> Tensor:
        logits = self.net(self.z)[0]  # (P, K, K)
        p, k = self.patches, self.kernel_size
        return torch.softmax(logits.reshape(p, k * k), dim=-1).reshape(p, k, k)


class KernelGenerators(nn.Module):
    """The 2 (r > 0 only) or 4 (r of both signs) generators of a stack.

    Attributes:
        sides: ``("behind",)`` (r > 0), ``("in_front",)`` (r < 0) or ``("behind", "in_front")``
            (:mod:`edgedp.conventions`).
        side_radius: |radius| (px) that each side's generator output stands for.
    Calling it returns ``{side: (2, P, K, K)}`` ([left, right] generators of that side).
    """

    def __init__(
        self, sides: tuple[str, ...], side_radius: dict[str, float], patches: int, kernel_size: int, *, width: float, seed: int
    ) -> None:
        super().__init__()
        self.sides = tuple(sides)
        self.side_radius = dict(side_radius)
        gens = {}
        with torch.random.fork_rng(devices=[]):
            for index, name in enumerate(f"{s}_{v}" for s in self.sides for v in ("left", "right")):
                torch.manual_seed(int(seed) * 1009 + index)
                gens[name] = KernelGenerator(patches, kernel_size, width)
        self.gens = nn.ModuleDict(gens)

    def forward(self) -> dict[str, Tensor]:
        return {s: torch.stack([self.gens[f"{s}_left"](), self.gens[f"{s}_right"]()]) for s in self.sides}
