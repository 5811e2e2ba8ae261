#!/usr/bin/env python
"""Focus sweep with refocus.onnx: run it at several focus values and tile the results into one PNG.

Needs an export folder (``edgedp export``); uses only numpy + onnxruntime + edgedp's PNG writer.
The focus values default to 5 steps from 0 (the captured focus) to the largest layer radius, so
the sweep moves the in-focus plane from the captured one to the farthest layer.

    .venv/bin/edgedp synth -o out/sample --overwrite
    .venv/bin/edgedp fit out/sample/left.png out/sample/right.png -o out/sample/fit --preset fast --overwrite
    .venv/bin/edgedp export out/sample/fit -o out/sample/export --overwrite
    .venv/bin/python tools/focus_sweep.py out/sample/export -o docs/focus_sweep.png --overwrite
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edgedp.io import write_png8  # noqa: E402
from edgedp.visualize import display_gamma  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export", type=Path, help="edgedp export folder (with export.json and refocus.onnx)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="output PNG")
    ap.add_argument("--focus", type=str, default=None, help="comma-separated focus values (px); default 5 from 0 to max radius")
    ap.add_argument("--aperture", type=float, default=1.0, help="aperture scale (1 = captured)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()

    import onnxruntime as ort

    side = json.loads((args.export / "export.json").read_text())
    g = side["graphs"]["refocus"]
    sess = ort.InferenceSession(str(args.export / g["file"]), providers=["CPUExecutionProvider"])
    image = np.load(args.export / g["test_input"])
    rmax = max(abs(r) for r in side["radii"])
    focus = [float(v) for v in args.focus.split(",")] if args.focus else list(np.linspace(0, rmax, 5))
    out_name = sess.get_outputs()[0].name
    scale = float(np.percentile(image, 99.5)) or 1.0
    tiles = []
    for f in focus:
        feeds = {"image": image, "focus": np.array(f, np.float32), "aperture": np.array(args.aperture, np.float32)}
        (y,) = sess.run([out_name], feeds)
        tiles.append(display_gamma(y[0], scale))
        print(f"focus {f:+.2f} px: done")
    gap = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
    row = np.concatenate([t if i == 0 else np.concatenate([gap, t], 1) for i, t in enumerate(tiles)], axis=1)
    write_png8(args.out, row, overwrite=args.overwrite)
    print(f"wrote {args.out}: focus {', '.join(f'{f:+.1f}' for f in focus)} px, aperture {args.aperture:g}")


if __name__ == "__main__":
    main()
