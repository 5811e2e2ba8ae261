#!/usr/bin/env python
"""Time one instant-path call (``edgedp_runtime.instant.instant_predict``, numpy only) on a synthetic
frame: uniform kernels against a kernel field's per-cell kernels, each with and without the TV twin.

The frame: H x W random views, L layers (radii 0..L-1, K = 2 (L - 1) + 1), random alphas (every
layer used, the worst case for the TV twin), the field a tilted field (``tilted_field``: tilt_x
+-0.6 by half, tilt_y +-0.4 by third of the frame, as the Pixel 4 estimate).  Prints one line per
configuration with the call's own timings (latent, fuse, deconvolution) and their ratios to the
uniform call, side by side in one run.

Usage::

    .venv/bin/python tools/bench_instant.py [--size 1008x1344] [--layers 18] [--grid 6x8] [--repeat 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from edgedp.fit.kernel_estimation import tilted_field
from edgedp.io import parse_size
from edgedp.physics import field_layer_kernels
from edgedp_runtime import instant


def field_kernels(layers: int, grid: tuple[int, int]) -> np.ndarray:
    pr, pc = grid
    tilts = torch.zeros(pr, pc, 2, dtype=torch.float64)
    tilts[:, : pc // 2, 0], tilts[:, pc // 2 :, 0] = 0.6, -0.6
    tilts[: pr // 3, :, 1], tilts[pr - pr // 3 :, :, 1] = 0.4, -0.4
    radius = float(layers - 1)
    field = tilted_field(tilts, radius)
    return field_layer_kernels(field, torch.arange(layers, dtype=torch.float64), 0.645, 2 * (layers - 1) + 1).float().numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1008x1344")
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--grid", default="6x8")
    parser.add_argument("--repeat", type=int, default=1, help="calls per configuration (the minimum is printed)")
    args = parser.parse_args(argv)
    h, w = parse_size(args.size)
    grid = parse_size(args.grid, what="grid")
    rng = np.random.default_rng(0)
    views = np.clip(0.5 + 0.1 * rng.standard_normal((2, h, w)).astype(np.float32), 0, 1)
    alphas = rng.random((args.layers, h, w), dtype=np.float32)
    alphas[0] = 1
    radii = np.arange(args.layers, dtype=np.float32)
    patch = field_kernels(args.layers, grid)
    uniform = patch.mean(axis=(0, 1))
    reference = None
    print(f"{h}x{w}, {args.layers} layers, K {patch.shape[-1]}, field {grid[0]}x{grid[1]}; min of {args.repeat} call(s)")
    for name, kernels in (("uniform", uniform), (f"field {grid[0]}x{grid[1]}", patch)):
        for tv in (6, 0):
            config = instant.InstantConfig(tv_iterations=tv)
            best = None
            for _ in range(max(1, args.repeat)):
                timings: dict = {}
                t0 = time.perf_counter()
                instant.instant_predict(views, alphas, kernels, radii, config=config, timings=timings)
                total = time.perf_counter() - t0
                if best is None or total < best[0]:
                    best = (total, timings)
            total, t = best
            reference = reference or total
            print(f"{name:>10}  TV {tv}: {total:6.1f} s ({total / reference:4.2f}x)  latent {t.get('latent', 0):.1f}  "
                  f"fuse {t.get('fuse', 0):.1f}  deconvolution {t.get('deconvolution', 0):.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
