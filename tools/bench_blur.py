#!/usr/bin/env python
"""Benchmark the layer-blur paths of :mod:`edgedp.physics.blur` side by side (one run, same load).

Times, per image size, for ``L`` layers x 2 views with random ``K x K`` kernels (layer ``i``
non-zero in its central ``(2i + 1)^2``, the front-only layer pyramid):

- ``fft blur``        :func:`blur_stack_fft` with a precomputed :class:`KernelSpectrum`
- ``fft blur f+b``    the same plus backward w.r.t. the stack
- ``fft render``      :func:`render_dual_pixel` (blur + compositing, the Stage 2 forward)
- ``fft render f+b``  the same plus backward w.r.t. latent and weights
- ``naive fft``       an unchunked reference FFT blur differentiated by plain autograd
- ``direct blur``     :func:`blur_stack_direct` (depthwise conv2d, channels_last)
- ``patch ...``       (``--patch-grid``) the Stage 3 patchwise render with kernels as leaves

and prints wall seconds (best of ``--repeats``, median in brackets), the ratio to ``fft blur``,
CPU seconds (all threads), the peak resident memory growth of each case, and the max relative
error of the FFT path against the direct one.

Example::

    .venv/bin/python tools/bench_blur.py --sizes 1008x1344 504x672 --layers 18 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable

if "--thp" in sys.argv:
    # PyTorch reads this once, at its first CPU allocation: it must be set before the import.
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from edgedp import physics  # noqa: E402
from edgedp.io import parse_size  # noqa: E402
from edgedp.run import peak_rss_bytes, reset_peak_rss  # noqa: E402


def random_kernels(views: int, layers: int, k: int, seed: int) -> torch.Tensor:
    """Non-negative kernels ``(views, layers, k, k)`` summing to 1; layer i in its central 2i+1."""
    g = torch.Generator().manual_seed(seed)
    ker = torch.rand(views, layers, k, k, generator=g)
    c = k // 2
    mask = torch.zeros(layers, k, k)
    for i in range(layers):
        r = min(i, c)
        mask[i, c - r : c + r + 1, c - r : c + r + 1] = 1
    ker = ker * mask
    return ker / ker.sum(dim=(-1, -2), keepdim=True)


def naive_fft_blur(stack: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Straightforward FFT blur: whole stack at once, plain autograd (the 'before' version)."""
    _, _, h, w = stack.shape
    k = kernels.shape[-1]
    p = k // 2
    hp, wp = h + 2 * p, w + 2 * p
    xp = F.pad(stack, (p, p, p, p), mode="replicate")
    kf = torch.fft.rfft2(kernels, s=(hp, wp))
    y = torch.fft.irfft2(torch.fft.rfft2(xp).unsqueeze(1) * kf, s=(hp, wp))
    return y[..., 2 * p : 2 * p + h, 2 * p : 2 * p + w]


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, float, float]:
    """Best and median wall seconds, best CPU seconds (all threads; less sensitive to other
    processes than wall time) and peak RSS growth (MiB) over ``repeats`` runs after a warm-up."""
    fn()
    gc.collect()
    ok = reset_peak_rss()
    base = peak_rss_bytes()  # right after the reset: the current RSS
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    peak = (peak_rss_bytes() - base) / 2**20 if ok else float("nan")
    return min(walls), statistics.median(walls), min(cpus), peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=[(1008, 1344), (504, 672)],
                    help="image sizes HxW (default: 1008x1344 504x672)")
    ap.add_argument("--layers", type=int, default=18, help="layers L (default 18)")
    ap.add_argument("--kernel-size", type=int, default=35, help="K (odd, default 35)")
    ap.add_argument("--batch", type=int, default=1, help="batch B (default 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per case (default 3)")
    ap.add_argument("--skip-direct-full", action="store_true",
                    help="skip the direct path at the first (largest) size")
    ap.add_argument("--skip-naive", action="store_true", help="skip the naive FFT reference")
    ap.add_argument("--patch-grid", type=parse_size, default=None, metavar="PRxPC",
                    help="also time the patchwise render on this grid (e.g. 6x8)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--thp", action="store_true",
                    help="set THP_MEM_ALLOC_ENABLE=1 (PyTorch backs large CPU tensors with "
                         "transparent huge pages: far fewer page faults on fresh allocations)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    k, layers, batch = args.kernel_size, args.layers, args.batch
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, "
          f"THP_MEM_ALLOC_ENABLE={thp}, "
          f"B={batch} L={layers} V=2 K={k}, best of {args.repeats} (median in brackets)")

    for si, (h, w) in enumerate(args.sizes):
        g = torch.Generator().manual_seed(1)
        stack = torch.rand(batch, layers, h, w, generator=g, dtype=dtype)
        weights = torch.softmax(torch.randn(batch, layers, h, w, generator=g, dtype=dtype), dim=1)
        kernels = random_kernels(2, layers, k, seed=2).to(dtype)
        t0 = time.perf_counter()
        spec = physics.kernel_spectrum(kernels, (h, w))
        t_spec = time.perf_counter() - t0
        grad_out = torch.randn(batch, 2, layers, h, w, generator=g, dtype=dtype)
        x_leaf = stack.clone().requires_grad_(True)
        w_leaf = weights.clone().requires_grad_(True)

        def fft_fwd() -> object:
            with torch.no_grad():
                return physics.blur_stack_fft(stack, spec)

        def fft_fb() -> object:
            x_leaf.grad = None
            physics.blur_stack_fft(x_leaf, spec).backward(grad_out)
            return x_leaf.grad

        def render_fwd() -> object:
            with torch.no_grad():
                return physics.render_dual_pixel(stack, weights, spec)

        def render_fb() -> object:
            x_leaf.grad = w_leaf.grad = None
            physics.render_dual_pixel(x_leaf, w_leaf, spec).square().mean().backward()
            return x_leaf.grad

        def naive_fwd() -> object:
            with torch.no_grad():
                return naive_fft_blur(stack, kernels)

        def naive_fb() -> object:
            x_leaf.grad = None
            naive_fft_blur(x_leaf, kernels).backward(grad_out)
            return x_leaf.grad

        def direct_fwd() -> object:
            with torch.no_grad():
                return physics.blur_stack_direct(stack, kernels)

        cases: list[tuple[str, Callable[[], object]]] = [
            ("fft blur", fft_fwd), ("fft blur f+b", fft_fb),
            ("fft render", render_fwd), ("fft render f+b", render_fb),
        ]
        if not args.skip_naive:
            cases += [("naive fft blur", naive_fwd), ("naive fft blur f+b", naive_fb)]
        if args.patch_grid is not None:
            pr, pc = args.patch_grid
            pk = kernels.expand(pr, pc, *kernels.shape).clone()
            pk = (pk * (1 + 0.1 * torch.rand(pk.shape, generator=g, dtype=dtype)))
            pk = (pk / pk.sum(dim=(-1, -2), keepdim=True)).requires_grad_(True)

            def patch_fwd() -> object:
                with torch.no_grad():
                    return physics.render_dual_pixel_patchwise(stack, weights, pk)

            def patch_fb() -> object:
                x_leaf.grad = w_leaf.grad = pk.grad = None
                physics.render_dual_pixel_patchwise(x_leaf, w_leaf, pk).square().mean().backward()
                return pk.grad

            cases += [
                (f"patch {pr}x{pc} render", patch_fwd),
                (f"patch {pr}x{pc} render f+b", patch_fb),
            ]
        run_direct = not (args.skip_direct_full and si == 0)
        if run_direct:
            cases.append(("direct blur", direct_fwd))

        print(f"\n== {h}x{w}: FFT size {spec.padded_shape}, kernel spectrum {t_spec:.3f} s")
        print(f"{'case':<26}{'wall s [median]':>18}{'x fft blur':>12}{'cpu s':>8}{'peak MiB':>10}")
        base = None
        for name, fn in cases:
            best, med, cpu, peak = timed(fn, args.repeats)
            base = base if base is not None else best
            ratio = best / base
            print(f"{name:<26}{best:>9.3f} [{med:>6.3f}]{ratio:>12.2f}{cpu:>8.2f}{peak:>10.0f}")
        if run_direct:
            a, b = fft_fwd(), direct_fwd()
            assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            err = ((a - b).abs().max() / b.abs().max()).item()
            print(f"max |fft - direct| / max |direct| = {err:.2e}")
        del spec, grad_out, x_leaf, w_leaf
        gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
