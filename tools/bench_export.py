#!/usr/bin/env python
"""Benchmark the exported graphs (ONNX Runtime CPU) against a naive export and the PyTorch render.

A synthetic scene of the issue's size (default 1008x1344, 19 layers with radii 0..17 px, 35x35
Butterworth DP kernels from :func:`edgedp.physics.kernels.kernel_pyramid`, random smooth weights and a
random latent map) is exported with :func:`edgedp.deploy.onnx_export.export_scene`; then, in one run:

- ``render.onnx`` (factored: per-layer support crop + joint low-rank separable convs),
- a naive ``render`` export: one grouped 35x35 Conv per view over all layers (pad by 17),
- the PyTorch render :func:`edgedp.physics.blur.render_dual_pixel` (FFT),
- ``refocus.onnx`` at (focus, aperture) = (0, 1),

each timed (median of ``--repeat`` calls, ``--threads`` threads), with the errors against the
PyTorch render (max abs, max rel = max abs / max |ref|); then the FP16 emulation of render.onnx
and refocus.onnx (every float tensor rounded to FP16, :func:`edgedp.deploy.onnx_tools.emulate_fp16`:
what an FP16 TensorRT engine computes) against the same references.

    .venv/bin/python tools/bench_export.py            # full size (needs ~4 GB RAM, ~1-2 min)
    .venv/bin/python tools/bench_export.py --size 301x401 --repeat 2
    .venv/bin/python tools/bench_export.py --skip-naive --unfolded   # + the graph before constant folding
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from edgedp.physics import kernel_pyramid  # noqa: E402
from edgedp.deploy import ExportConfig, export_scene, export_torch, refocus_reference, render_reference  # noqa: E402
from edgedp.deploy.onnx_tools import ort_session  # noqa: E402
from edgedp.physics import render_dual_pixel  # noqa: E402


class NaiveRender(torch.nn.Module):
    """One grouped Conv per view (L groups, K x K), replicate pad K//2, weighted sum."""

    def __init__(self, weights: torch.Tensor, kernels: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", weights[None].clone())
        k = kernels.shape[-1]
        self.k = k
        self.register_buffer("wl", kernels[0].flip(-1, -2)[:, None].contiguous())
        self.register_buffer("wr", kernels[1].flip(-1, -2)[:, None].contiguous())

    def forward(self, latent):
        p = self.k // 2
        xp = F.pad(latent, (p, p, p, p), mode="replicate")
        layers = latent.shape[1]
        left = (F.conv2d(xp, self.wl, groups=layers) * self.weights).sum(1, keepdim=True)
        right = (F.conv2d(xp, self.wr, groups=layers) * self.weights).sum(1, keepdim=True)
        aif = (latent * self.weights).sum(1, keepdim=True)
        return left, right, aif


def make_scene(h: int, w: int, layers: int, rmax: float, k: int, seed: int = 0) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    radii = torch.linspace(0, rmax, layers)
    kernels = kernel_pyramid(radii, size=k)
    logits = F.interpolate(torch.randn(1, layers, h // 32 + 2, w // 32 + 2, generator=g) * 3, size=(h, w), mode="bilinear")
    weights = torch.softmax(logits, dim=1)[0]
    latent = F.avg_pool2d(torch.rand(1, layers, h, w, generator=g), 3, 1, 1, count_include_pad=False)
    defocus = (weights * radii[:, None, None]).sum(0)
    aif = (latent[0] * weights).sum(0, keepdim=True)
    meta = {"bundle_id": "bench", "config": {"kernel_model": "butterworth"}}
    return SimpleNamespace(latent=latent, weights=weights, radii=radii, kernels=kernels, patch_kernels=None,
                           defocus=defocus, allinfocus=aif, meta=meta, folder=Path("."))


def timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def err(a, b) -> str:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = float(np.abs(a - b).max())
    return f"max_abs {m:.2e}  max_rel {m / float(np.abs(b).max()):.2e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1008x1344")
    ap.add_argument("--layers", type=int, default=19)
    ap.add_argument("--max-radius", type=float, default=17.0)
    ap.add_argument("--kernel-size", type=int, default=35)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-naive", action="store_true", help="Skip the (slow) naive export.")
    ap.add_argument("--unfolded", action="store_true",
                    help="Also time render.onnx as torch.onnx writes it, before edgedp's constant folding (side by side).")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(args.threads)
    scene = make_scene(h, w, args.layers, args.max_radius, args.kernel_size)
    print(f"scene {h}x{w}, {args.layers} layers, radii 0..{args.max_radius:g}, kernels {args.kernel_size}x{args.kernel_size}, "
          f"{args.threads} threads, median of {args.repeat}")
    latent = scene.latent
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        side = export_scene(scene, tmp, ExportConfig(), gd=False, verify=False)
        print(f"export: {time.perf_counter() - t0:.1f} s, render MACs/pixel {side['graphs']['render']['macs_per_pixel']} "
              f"(naive {2 * args.layers * args.kernel_size ** 2})")
        ref = render_reference(scene, latent)
        feeds = {"latent": latent.numpy()}

        t_torch = timeit(lambda: render_dual_pixel(latent, scene.weights[None], scene.kernels), args.repeat)
        print(f"pytorch render_dual_pixel (FFT): {t_torch:.3f} s")

        sess = ort_session(tmp / "render.onnx", threads=args.threads)
        got = sess.run(None, feeds)
        t_fact = timeit(lambda: sess.run(None, feeds), args.repeat)
        print(f"render.onnx (factored), ORT CPU:  {t_fact:.3f} s   left {err(got[0], ref['left'])}  right {err(got[1], ref['right'])}  "
              f"allinfocus {err(got[2], ref['allinfocus'])}")
        del sess

        if args.unfolded:  # the same graph before onnx_tools.fold_constants: folding must not cost speed
            from edgedp.deploy import RenderModule  # noqa: PLC0415

            export_torch(RenderModule(scene.weights, scene.kernels), (latent,), tmp / "unfolded.onnx",
                         ["latent"], ["left", "right", "allinfocus"], 17)
            sess = ort_session(tmp / "unfolded.onnx", threads=args.threads)
            t_unf = timeit(lambda: sess.run(None, feeds), args.repeat)
            print(f"render.onnx before constant folding, ORT CPU: {t_unf:.3f} s")
            print(f"  folded / unfolded: {t_fact / t_unf:.2f}x time")
            del sess

        t_naive = None
        if not args.skip_naive:
            export_torch(NaiveRender(scene.weights, scene.kernels), (latent,), tmp / "naive.onnx",
                          ["latent"], ["left", "right", "allinfocus"], 17)
            sess = ort_session(tmp / "naive.onnx", threads=args.threads)
            got = sess.run(None, feeds)
            t_naive = timeit(lambda: sess.run(None, feeds), max(1, min(args.repeat, 2)))
            print(f"naive render (grouped {args.kernel_size}x{args.kernel_size} Conv/view), ORT CPU: {t_naive:.3f} s   "
                  f"left {err(got[0], ref['left'])}  right {err(got[1], ref['right'])}")
            del sess

        sess = ort_session(tmp / "refocus.onnx", threads=args.threads)
        rfeeds = {"image": scene.allinfocus[None].numpy(), "focus": np.array(0, np.float32), "aperture": np.array(1, np.float32)}
        t_ref = timeit(lambda: sess.run(None, rfeeds), args.repeat)
        print(f"refocus.onnx ({side['graphs']['refocus']['levels'] + 1} levels), ORT CPU: {t_ref:.3f} s")
        del sess

        # FP16: what an FP16 engine computes, emulated (every float tensor rounded to FP16)
        sess = ort_session(tmp / "render.onnx", threads=args.threads, fp16=True)
        got = sess.run(None, feeds)
        print(f"render.onnx FP16 emulation: left {err(got[0], ref['left'])}  right {err(got[1], ref['right'])}  "
              f"allinfocus {err(got[2], ref['allinfocus'])}")
        del sess
        sess = ort_session(tmp / "refocus.onnx", threads=args.threads, fp16=True)
        bank = torch.from_numpy(np.load(tmp / side["graphs"]["refocus"]["bank"]))
        rref = refocus_reference(scene.defocus[None, None], bank, scene.allinfocus[None], 0.0, 1.0)
        print(f"refocus.onnx FP16 emulation (focus 0, aperture 1): {err(sess.run(None, rfeeds)[0], rref.numpy())}")
        del sess

    print("ratios:")
    print(f"  render.onnx / pytorch FFT render: {t_fact / t_torch:.2f}x time")
    if t_naive:
        print(f"  naive / render.onnx: {t_naive / t_fact:.2f}x speed-up")
    target = 1.5
    print(f"target render.onnx <= {target} s: {'MET' if t_fact <= target else 'MISSED'} ({t_fact:.3f} s)")


if __name__ == "__main__":
    main()
