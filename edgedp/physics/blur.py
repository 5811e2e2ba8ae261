"""Image formation for dual-pixel (DP) defocus: layer blur, MPI compositing, DP re-rendering.

Pure, differentiable tensor functions; device and dtype follow the inputs.

Shapes
------
- layer stack (latent map ``x_i``, alphas ``a_i``, compositing weights ``d_i``): ``(B, L, H, W)``
- kernels: ``(V, L, K, K)``; ``V`` views (0 = left, 1 = right), ``L`` layers, ``K`` odd;
  patchwise kernels ``(Pr, Pc, V, L, K, K)`` (one kernel stack per cell of a ``Pr x Pc`` grid)
- blurred stack: ``(B, V, L, H, W)``; rendered DP pair: ``(B, 2, H, W)`` (0 = left, 1 = right)

Blur convention (binding, see ``CONVENTIONS.md``)
-------------------------------------------------
Blur is **true convolution** with the kernel centred at ``(K // 2, K // 2)``::

    y[r, c] = sum_{u, v = -K//2 .. K//2} k[K//2 + u, K//2 + v] * x_ext[r - u, c - v]

so a point at ``p`` shows up as ``k(u)`` at ``p + u`` (the kernel is the PSF), and kernel mass left
of the centre column moves the image to the left.  ``x_ext`` is the image extended by **edge
replication** (``replicate``) by ``K // 2`` pixels on every side; the output has the input's size.

Nothing wraps around in the FFT path: the replicate-padded image (``H + 2 * (K // 2)`` rows) is
transformed at a fast size ``Hp >= H + 2 * (K // 2)`` (likewise for columns), the kernel spectrum
is that of the ``K x K`` kernel placed at indices ``[0, K)``, and output pixel ``(r, c)`` is read
at ``(r + 2 * (K // 2), c + 2 * (K // 2))`` of the circular result, which only involves padded
input rows/cols ``[0, H + 2 * (K // 2))``.  Hence :func:`blur_stack_fft` and
:func:`blur_stack_direct` compute the same operator (to float rounding), borders included.

Adjoint: where input and output vanish within ``K // 2`` of the border, the transpose of the blur
is the convolution with the 180-degree rotated kernel.  At the borders the exact transpose (which
autograd computes) also folds the replicated margin back onto the edge pixels.

Compositing (thesis Eq. 6, 9, 11)
---------------------------------
``d_i = a_i * prod_{j > i} (1 - a_j)`` (the "over" operator, layer ``L - 1`` on top),
all-in-focus ``x = sum_i d_i x_i`` and the DP re-render ``y_v = sum_i d_i * (x_i conv f_i^v)``.
Front-only (radii ``0..N``) and front+back (radii ``-N..N``) scenes differ only in which kernels
the layers carry; the functions here do not care.

Non-uniform blur (Stage 3, thesis Eq. 12)
-----------------------------------------
The image is split into a ``Pr x Pc`` grid of cells, each with its own kernel stack ``k_p``.  With
bilinear "tent" weights ``w_p`` centred on the cell centres (:func:`patch_blend_weights`, a
partition of unity) ``y = sum_p w_p * (x conv k_p)``: no seams, and equal kernels give the uniform
blur.  Each ``x conv k_p`` is only evaluated on the support of ``w_p`` (about 2 x 2 cells).

Performance (CPU)
-----------------
- Each layer is transformed once and the transform serves both views; kernel spectra can be
  precomputed once per image size (:func:`kernel_spectrum`) and reused by every re-render of a fit.
- The stack is processed in chunks whose largest buffer stays below :data:`CPU_CHUNK_BYTES`:
  glibc recycles such blocks from its heap, while bigger ones are ``mmap``-ed afresh on every call
  and page-faulted in (that alone made an unchunked version 2-3x slower).
- Backward passes use hand-written adjoints (one real FFT per view and one inverse per layer)
  instead of autograd through ``rfft2``/``irfft2`` (whose ``rfft2`` backward is a full complex FFT)
  and through crops (each crop's backward materializes a zero-filled full-size tensor).
These functions are once-differentiable (no double backward through the blur).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# One definition of the FFT grid sizes for the library and the device's numpy instant path (the
# runtime needs no torch; edgedp may import it, not the reverse), so their padded grids agree.
from edgedp_runtime import instant as runtime_instant
from edgedp_runtime.instant import fast_size

__all__ = [
    "CPU_CHUNK_BYTES",
    "KernelSpectrum",
    "complex_dtype",
    "blur_stack",
    "blur_stack_direct",
    "blur_stack_fft",
    "blur_stack_patchwise",
    "fast_size",
    "composite",
    "kernel_spectrum",
    "over_weights",
    "patch_blend_weights",
    "render_dual_pixel",
    "render_dual_pixel_patchwise",
    "support_spans",
    "tent_weights",
]

Method = Literal["fft", "direct"]

#: On CPU, the target size (bytes) of the largest per-chunk buffer of the FFT paths; kept below
#: glibc's largest dynamic mmap threshold (32 MiB) so that chunk buffers get recycled.
CPU_CHUNK_BYTES = 24 * 2**20
#: The same for other devices (CUDA): large, i.e. few big batched transforms.
DEVICE_CHUNK_BYTES = 2**31


# ---------------------------------------------------------------------------------------------
# small helpers


def _fft_shape(h: int, w: int, kernel_size: int) -> tuple[int, int]:
    """FFT size for an ``h x w`` output blurred by a ``kernel_size`` kernel (no wrap-around)."""
    p = kernel_size // 2
    return fast_size(h + 2 * p), fast_size(w + 2 * p, even=True)


def _check_stack(stack: Tensor, name: str = "stack") -> None:
    if stack.ndim != 4:
        raise ValueError(f"{name} must be (B, L, H, W), got {tuple(stack.shape)}")
    if not stack.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {stack.dtype}")


def _check_kernels(kernels: Tensor, layers: int | None = None, *, lead: int = 0) -> None:
    """``kernels`` is ``(*lead dims, V, L, K, K)`` with K odd (and L == layers if given)."""
    shape = tuple(kernels.shape)
    want = "(Pr, Pc, V, L, K, K)" if lead else "(V, L, K, K)"
    if len(shape) != 4 + lead or shape[-1] != shape[-2] or shape[-1] % 2 == 0:
        raise ValueError(f"kernels must be {want} with K odd, got {shape}")
    if layers is not None and shape[-3] != layers:
        raise ValueError(f"kernels have {shape[-3]} layers, the stack has {layers}")


def _check_same_shape(latent: Tensor, weights: Tensor) -> None:
    _check_stack(latent, "latent")
    if weights.shape != latent.shape:
        raise ValueError(f"weights {tuple(weights.shape)} must match latent {tuple(latent.shape)}")


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of a real one's spectra: complex128 for float64, else complex64."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _replicate_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Edge-replicate the last two dims (any number of leading dims)."""
    lead = x.shape[:-2]
    y = F.pad(x.reshape(-1, 1, *x.shape[-2:]), (left, right, top, bottom), mode="replicate")
    return y.reshape(*lead, *y.shape[-2:])


def _block_sizes(
    device: torch.device, batch: int, layers: int, bytes_per_item: int
) -> tuple[int, int]:
    """(batch block, layer block) so that one block's buffers stay within the chunk budget."""
    budget = CPU_CHUNK_BYTES if device.type == "cpu" else DEVICE_CHUNK_BYTES
    per_layer = bytes_per_item * batch
    if per_layer <= budget:
        return batch, max(1, min(layers, budget // per_layer))
    return max(1, budget // bytes_per_item), 1


def _split2(x: Tensor, bc: int, lc: int) -> list[list[Tensor]]:
    """Split dims 0 and 1 into blocks of ``bc`` and ``lc``.

    ``split`` rather than indexing: its backward is one concatenation, whereas every indexed
    slice's backward materializes a zero-filled full-size tensor.  Trivial splits are skipped
    (their backward would still copy the whole gradient once).
    """
    rows = [x] if bc >= x.shape[0] else list(x.split(bc, dim=0))
    return [[r] if lc >= r.shape[1] else list(r.split(lc, dim=1)) for r in rows]


def _kernel_rfft2(kernels: Tensor, shape: tuple[int, int]) -> Tensor:
    """``rfft2(kernels, s=shape)`` of small ``K x K`` kernels, cheaper: the row transforms run on
    the ``K`` non-zero rows only, then the column transforms zero-fill to ``shape[0]``."""
    return torch.fft.fft(torch.fft.rfft(kernels, n=shape[1], dim=-1), n=shape[0], dim=-2)


def _irfft2_corner(z: Tensor, shape: tuple[int, int], k: int) -> Tensor:
    """``irfft2(z, s=shape)[..., :k, :k]`` computing only the ``k`` rows that are kept before the
    (real) row transforms."""
    return torch.fft.irfft(torch.fft.ifft(z, dim=-2)[..., :k, :], n=shape[1], dim=-1)[..., :k]


def _embed(g: Tensor, top: int, left: int, shape: tuple[int, int]) -> Tensor:
    """Zero-fill ``g`` into an array of ``shape`` (last two dims) at offset ``(top, left)``."""
    h, w = g.shape[-2:]
    return F.pad(g, (left, shape[1] - w - left, top, shape[0] - h - top))


# ---------------------------------------------------------------------------------------------
# FFT convolution of one block with a hand-written adjoint


def _conv_forward(
    xp: Tensor, kf: Tensor, shape: tuple[int, int], p: int, out_hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """``(b, l, h', w')`` padded block x ``(V, l, Hp, Wf)`` spectra -> ``(b, V, l, h, w)`` view.

    Output pixel ``(r, c)`` uses ``xp[r : r + 2p + 1, c : c + 2p + 1]`` (``p`` pixels of context on
    each side); ``xp`` is zero-filled up to ``shape`` (``h + 2p <= h' <= Hp``).  Also returns the
    input spectrum ``rfft2(xp, s=shape)``.
    """
    h, w = out_hw
    if tuple(xp.shape[-2:]) != shape:  # one copy that zero-fills (rfft2(s=) would copy twice)
        xp = _embed(xp, 0, 0, shape)
    xf = torch.fft.rfft2(xp)  # one transform per layer, shared by all views
    y = torch.fft.irfft2(xf.unsqueeze(1) * kf, s=shape)
    # Kernel at [0, K) instead of [-p, p]: output (r, c) lands at (r + 2p, c + 2p), and only reads
    # xp rows/cols [r, r + 2p] (< h + 2p <= Hp): no wrap-around.
    return y[..., 2 * p : 2 * p + h, 2 * p : 2 * p + w], xf


def _conv_adjoint(
    g: Tensor,
    kf: Tensor | None,
    xf: Tensor | None,
    shape: tuple[int, int],
    p: int,
    in_hw: tuple[int, int],
    k: int,
) -> tuple[Tensor | None, Tensor | None]:
    """Adjoint of :func:`_conv_forward` for the output gradient ``g`` ``(b, V, l, h, w)``.

    Returns ``(grad wrt xp (b, l, h', w') or None, grad wrt kernels (V, l, K, K) or None)``:
    circular correlations of the zero-embedded ``g`` with the kernels (views summed in the
    Fourier domain) and with the input.
    """
    gf = torch.fft.rfft2(_embed(g, 2 * p, 2 * p, shape))
    gx = gk = None
    if kf is not None:
        gx = torch.fft.irfft2((gf * kf.conj()).sum(dim=1), s=shape)
        # Input rows/cols the output never reads get exactly zero (not FFT round-off).
        gx[..., g.shape[-2] + 2 * p :, :] = 0
        gx[..., :, g.shape[-1] + 2 * p :] = 0
        gx = gx[..., : in_hw[0], : in_hw[1]]
    if xf is not None:
        gk = _irfft2_corner((gf * xf.unsqueeze(1).conj()).sum(dim=0), shape, k)
    return gx, gk


class _FFTConv(torch.autograd.Function):
    """Blur of a padded block, see :func:`_conv_forward`; kernels given spatially or as spectra."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        xp: Tensor,
        kernels: Tensor | None,
        kf: Tensor | None,
        shape: tuple[int, int],
        p: int,
        out_hw: tuple[int, int],
    ) -> Tensor:
        if kf is None:
            assert kernels is not None
            kf = _kernel_rfft2(kernels, shape)
        y, xf = _conv_forward(xp, kf, shape, p, out_hw)
        ctx.geometry = (shape, p, tuple(xp.shape[-2:]), 2 * p + 1)
        ctx.save_for_backward(kf, xf if ctx.needs_input_grad[1] else None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        kf, xf = ctx.saved_tensors
        shape, p, in_hw, k = ctx.geometry
        gx, gk = _conv_adjoint(g, kf if ctx.needs_input_grad[0] else None, xf, shape, p, in_hw, k)
        return gx, gk, None, None, None, None


def _conv_block(
    xp: Tensor,
    kernels: Tensor | None,
    kf: Tensor | None,
    shape: tuple[int, int],
    p: int,
    out_hw: tuple[int, int],
) -> Tensor:
    """Dispatch: hand-written adjoint unless a precomputed spectrum itself carries a graph."""
    if kf is not None and kf.requires_grad:
        return _conv_forward(xp, kf, shape, p, out_hw)[0]  # plain autograd (slower backward)
    return _FFTConv.apply(xp, kernels, kf, shape, p, out_hw)


# ---------------------------------------------------------------------------------------------
# kernel spectra and uniform blur


@dataclass(frozen=True)
class KernelSpectrum:
    """Precomputed rFFT of a kernel stack for one image size, reusable across calls.

    Attributes:
        values: complex ``(V, L, Hp, Wp // 2 + 1)``: ``rfft2`` of the ``(V, L, K, K)`` kernels
            placed at indices ``[0, K)`` and zero-filled to ``padded_shape`` (the implied shift
            of ``K // 2`` is undone when cropping).  Carries autograd history if the kernels did.
        image_shape: ``(H, W)`` of the images it applies to.
        padded_shape: FFT size ``(Hp, Wp)``, ``Hp >= H + 2 * (K // 2)``, ``Wp >= W + 2 * (K // 2)``,
            products of 2, 3, 5, 7 (``Wp`` even).
        kernel_size: ``K``.
    """

    values: Tensor
    image_shape: tuple[int, int]
    padded_shape: tuple[int, int]
    kernel_size: int

    @property
    def views(self) -> int:
        return int(self.values.shape[0])

    @property
    def layers(self) -> int:
        return int(self.values.shape[1])


def kernel_spectrum(kernels: Tensor, image_shape: tuple[int, int]) -> KernelSpectrum:
    """Precompute the spectrum of ``kernels`` ``(V, L, K, K)`` for images of ``image_shape``.

    Reuse it for every call with the same kernels and image size (e.g. all re-renders of a Stage 2
    fit).  Differentiable w.r.t. ``kernels``, but then the spectrum holds a graph (rebuild it after
    each optimizer step) and blurring falls back to plain autograd; for learned kernels passing the
    kernel tensor itself is faster.  Complex dtype follows the kernels (float64 -> complex128).
    """
    _check_kernels(kernels)
    h, w = (int(s) for s in image_shape)
    k = int(kernels.shape[-1])
    shape = _fft_shape(h, w, k)
    values = _kernel_rfft2(kernels, shape)
    return KernelSpectrum(values=values, image_shape=(h, w), padded_shape=shape, kernel_size=k)


def _uniform_blocks(
    stack: Tensor, kernels: Tensor | KernelSpectrum
) -> tuple[Iterator[tuple[int, int, Tensor]], int, int]:
    """Blocks ``(batch block, layer block, blurred (b, V, l, H, W))`` (batch outer, layers inner)
    of the uniform FFT blur, and the (batch, layer) block sizes.  Validates eagerly."""
    _check_stack(stack)
    b, layers, h, w = stack.shape
    spec: KernelSpectrum | None = None
    spatial: Tensor | None = None
    if isinstance(kernels, KernelSpectrum):
        spec = kernels
        if spec.image_shape != (h, w):
            raise ValueError(
                f"kernel spectrum was built for images {spec.image_shape}, got {(h, w)}"
            )
        want = complex_dtype(stack.dtype)
        if spec.values.dtype != want or spec.values.device != stack.device:
            raise ValueError(
                f"kernel spectrum is {spec.values.dtype} on {spec.values.device}, the stack needs "
                f"{want} on {stack.device}: build it from kernels of the stack's dtype and device"
            )
        if spec.layers != layers:
            raise ValueError(f"kernels have {spec.layers} layers, the stack has {layers}")
        views, k, shape = spec.views, spec.kernel_size, spec.padded_shape
    else:
        _check_kernels(kernels, layers)
        spatial = kernels.to(device=stack.device, dtype=stack.dtype)
        views, k = int(spatial.shape[0]), int(spatial.shape[-1])
        shape = _fft_shape(h, w, k)
    p = k // 2
    csize = 16 if stack.dtype == torch.float64 else 8
    bc, lc = _block_sizes(stack.device, b, layers, views * shape[0] * (shape[1] // 2 + 1) * csize)
    if spatial is not None and bc < b and not spatial.requires_grad:
        # the batch is split: transform the (fixed) kernels once, not once per batch block
        spec, spatial = kernel_spectrum(spatial, (h, w)), None
    kf_blocks = spec.values.split(lc, dim=1) if spec is not None else None
    k_blocks = spatial.split(lc, dim=1) if spatial is not None else None

    def gen() -> Iterator[tuple[int, int, Tensor]]:
        for bi, row in enumerate(_split2(stack, bc, lc)):
            for li, x in enumerate(row):
                # Replicate straight to the FFT size: rfft2 then needs no zero-fill copy, and the
                # extra rows/cols (beyond h + 2p) are never read by a kept output pixel.
                xp = _replicate_pad(x, p, shape[0] - h - p, p, shape[1] - w - p)
                kb = k_blocks[li] if k_blocks is not None else None
                kfb = kf_blocks[li] if kf_blocks is not None else None
                yield bi, li, _conv_block(xp, kb, kfb, shape, p, (h, w))

    return gen(), bc, lc


def blur_stack_fft(stack: Tensor, kernels: Tensor | KernelSpectrum) -> Tensor:
    """Blur every layer with its per-view kernel via FFT: ``(B, L, H, W) -> (B, V, L, H, W)``.

    ``out[b, v, i] = stack[b, i] conv kernels[v, i]`` (true convolution, replicate borders, see
    the module docstring).  ``kernels`` is ``(V, L, K, K)`` or a :class:`KernelSpectrum` built for
    ``(H, W)`` with the stack's dtype/device (precompute it when the kernels are fixed).
    Differentiable w.r.t. stack and kernels.

    Example:
        >>> from edgedp.physics import behind_radii, kernel_pyramid
        >>> kernels = kernel_pyramid(behind_radii(3, 4), 'disk')  # (2, 4, 7, 7)
        >>> stack = torch.rand(1, 4, 37, 53, generator=torch.Generator().manual_seed(0))
        >>> out = blur_stack_fft(stack, kernels)
        >>> out.shape, bool(torch.allclose(out[:, :, 0], stack[:, None, 0].expand(1, 2, 37, 53), atol=1e-5))
        (torch.Size([1, 2, 4, 37, 53]), True)
        >>> bool(torch.allclose(out, blur_stack_direct(stack, kernels), atol=1e-5))  # same operator
        True
    """
    blocks, _, _ = _uniform_blocks(stack, kernels)
    rows: list[list[Tensor]] = []
    for bi, _, y in blocks:
        if bi == len(rows):
            rows.append([])
        rows[bi].append(y)
    out = [torch.cat(r, dim=2) if len(r) > 1 else r[0].contiguous() for r in rows]
    return torch.cat(out, dim=0) if len(out) > 1 else out[0]


def blur_stack_direct(stack: Tensor, kernels: Tensor) -> Tensor:
    """Reference blur by spatial convolution: ``(B, L, H, W), (V, L, K, K) -> (B, V, L, H, W)``.

    Same operator as :func:`blur_stack_fft`: replicate-pad by ``K // 2``, then a depthwise
    ``conv2d`` with the **flipped** kernel (``conv2d`` is a correlation), in ``channels_last``
    (on CPU far faster than NCHW for large depthwise kernels).  Slow for large kernels: a
    reference for tests and benchmarks.
    """
    _check_stack(stack)
    b, layers, h, w = stack.shape
    _check_kernels(kernels, layers)
    v, _, k, _ = kernels.shape
    kernels = kernels.to(device=stack.device, dtype=stack.dtype)
    # A true depthwise conv (in = out = groups = L * V channels; channel i * V + v is layer i for
    # view v) hits a much faster kernel than groups = L with V outputs per group (~3x on CPU).
    weight = kernels.flip(-1, -2).transpose(0, 1).reshape(layers * v, 1, k, k)
    xp = F.pad(stack, (k // 2,) * 4, mode="replicate").repeat_interleave(v, dim=1)
    y = F.conv2d(
        xp.contiguous(memory_format=torch.channels_last),
        weight.contiguous(memory_format=torch.channels_last),
        groups=layers * v,
    )
    return y.reshape(b, layers, v, h, w).transpose(1, 2).contiguous()


def blur_stack(stack: Tensor, kernels: Tensor | KernelSpectrum, method: Method = "fft") -> Tensor:
    """:func:`blur_stack_fft` (default) or :func:`blur_stack_direct` (spatial kernels only)."""
    if method == "fft":
        return blur_stack_fft(stack, kernels)
    if isinstance(kernels, KernelSpectrum):
        raise ValueError("method='direct' needs spatial kernels, not a KernelSpectrum")
    return blur_stack_direct(stack, kernels)


# ---------------------------------------------------------------------------------------------
# compositing and the DP re-render


def over_weights(alphas: Tensor) -> Tensor:
    """MPI "over" compositing weights (thesis Eq. 6): ``d_i = a_i * prod_{j > i} (1 - a_j)``.

    ``alphas``: ``(..., L, H, W)`` in [0, 1], layer ``L - 1`` on top.  Returns the same shape.
    Telescoping gives ``sum_i d_i = 1 - prod_j (1 - a_j)``; set ``a_0 = 1`` (bottom layer
    opaque) to make the weights a partition of unity at every pixel.

    Example:
        >>> alphas = torch.tensor([1.0, 0.5, 0.25]).reshape(3, 1, 1)
        >>> over_weights(alphas).flatten().tolist()
        [0.375, 0.375, 0.25]
    """
    if alphas.ndim < 3:
        raise ValueError(f"alphas must be (..., L, H, W), got {tuple(alphas.shape)}")
    # prod_{j > i} (1 - a_j): reversed cumulative product, shifted by one layer.
    above = torch.cumprod((1 - alphas).flip(-3), dim=-3).flip(-3)
    ones = torch.ones_like(alphas[..., :1, :, :])
    return alphas * torch.cat([above[..., 1:, :, :], ones], dim=-3)


def composite(stack: Tensor, weights: Tensor) -> Tensor:
    """``sum_i d_i x_i`` over the layer dim ``-3``: ``(B, L, H, W) x2 -> (B, H, W)``.

    Broadcasts over leading dims: ``composite(blurred, weights[:, None])`` turns a blurred stack
    ``(B, V, L, H, W)`` into views ``(B, V, H, W)``, i.e. with a fixed latent map one can blur it
    once (:func:`blur_stack_fft`) and re-render cheaply for every new set of weights.

    Example:
        >>> composite(torch.ones(1, 3, 4, 5), torch.full((1, 3, 4, 5), 1 / 3)).shape
        torch.Size([1, 4, 5])
    """
    if stack.shape[-3:] != weights.shape[-3:]:
        raise ValueError(
            f"stack {tuple(stack.shape)} and weights {tuple(weights.shape)} must agree in (L, H, W)"
        )
    return (stack * weights).sum(dim=-3)


def _weighted_sum(
    blocks: Iterator[tuple[int, int, Tensor]], weights: Tensor, bc: int, lc: int
) -> Tensor:
    """``sum_i d_i * blurred_i`` over blocks ``(b, V, l, H, W)`` -> ``(B, V, H, W)``."""
    w_blocks = _split2(weights, bc, lc)
    acc: list[Tensor] = []
    for bi, li, y in blocks:
        part = (y * w_blocks[bi][li].unsqueeze(1)).sum(dim=2)
        if bi == len(acc):
            acc.append(part)
        else:
            acc[bi] = acc[bi] + part
    return torch.cat(acc, dim=0) if len(acc) > 1 else acc[0]


def render_dual_pixel(
    latent: Tensor,
    weights: Tensor,
    kernels: Tensor | KernelSpectrum,
    *,
    method: Method = "fft",
) -> Tensor:
    """Re-render the DP pair (thesis Eq. 9 / 11): ``y_v = sum_i d_i * (x_i conv f_i^v)``.

    Args:
        latent: latent map ``x`` ``(B, L, H, W)``.
        weights: compositing weights ``d`` ``(B, L, H, W)`` (e.g. :func:`over_weights`).
        kernels: ``(2, L, K, K)`` (0 left, 1 right) or a :class:`KernelSpectrum` of them.
            Front-only scenes use radii ``0..N`` (layer 0 a delta kernel, so its term is
            ``d_0 x_0`` as in Eq. 9); front+back scenes (Eq. 11) use radii ``-N..N`` with the
            back-focus pairs on the negative layers: only the kernels differ.
        method: ``"fft"`` (default) or ``"direct"`` (reference; spatial kernels only).

    Returns:
        ``(B, 2, H, W)``, index 0 left, 1 right.  Differentiable w.r.t. all inputs; the blurred
        stack is never materialized as a whole (the FFT path streams over layer blocks).

    Example:
        >>> from edgedp.physics import both_radii, kernel_pyramid
        >>> kernels = kernel_pyramid(both_radii(2, 1), 'butterworth')  # radii -2, 0, 2
        >>> latent = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(0))
        >>> weights = torch.zeros(1, 3, 37, 53); weights[:, 1] = 1  # everything in focus
        >>> views = render_dual_pixel(latent, weights, kernels)
        >>> views.shape, bool(torch.allclose(views[:, 0], latent[:, 1], atol=1e-5))
        (torch.Size([1, 2, 37, 53]), True)
    """
    _check_same_shape(latent, weights)
    if method == "direct":
        if isinstance(kernels, KernelSpectrum):
            raise ValueError("method='direct' needs spatial kernels, not a KernelSpectrum")
        return composite(blur_stack_direct(latent, kernels), weights.unsqueeze(1))
    blocks, bc, lc = _uniform_blocks(latent, kernels)
    return _weighted_sum(blocks, weights, bc, lc)


# ---------------------------------------------------------------------------------------------
# non-uniform (patchwise) blur


def tent_weights(n: int, parts: int) -> Tensor:
    """1-D bilinear tent weights ``(parts, n)`` in float64, centred on ``parts`` equal cells,
    flat (clamped) beyond the first/last centre; columns sum to 1 (the factors of
    :func:`patch_blend_weights`).

    >>> tent_weights(6, 2)
    tensor([[1.0000, 1.0000, 0.6667, 0.3333, 0.0000, 0.0000],
            [0.0000, 0.0000, 0.3333, 0.6667, 1.0000, 1.0000]], dtype=torch.float64)
    """
    if not 1 <= parts <= n:
        raise ValueError(f"cannot split {n} pixels into {parts} patches")
    # One definition for the library and the device's numpy instant path (a kernel field's cells).
    return torch.from_numpy(runtime_instant.tent_weights(n, parts))


def patch_blend_weights(
    image_shape: tuple[int, int],
    grid: tuple[int, int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Seamless blending weights ``(Pr, Pc, H, W)`` for a ``Pr x Pc`` patch grid.

    ``w[r, c] = a_r(y) * b_c(x)``, separable bilinear tents centred on the cell centres
    (``((r + 1/2) H / Pr - 1/2``, likewise for columns), each reaching zero at the neighbouring
    centres and clamped to 1 between the outermost centres and the border.  Non-negative and a
    partition of unity: ``w.sum((0, 1)) == 1`` everywhere.  ``w[r, c]`` vanishes outside the
    cells adjacent to ``(r, c)`` (at most 2 x 2 cells wide).

    Example:
        >>> w = patch_blend_weights((37, 53), (2, 3))
        >>> tuple(w.shape), bool(torch.allclose(w.sum((0, 1)), torch.ones(37, 53, dtype=w.dtype)))
        ((2, 3, 37, 53), True)
    """
    h, w = (int(s) for s in image_shape)
    pr, pc = (int(g) for g in grid)
    a, b = tent_weights(h, pr), tent_weights(w, pc)  # float64, edgedp_runtime.instant's tents
    return (a[:, None, :, None] * b[None, :, None, :]).to(device=device, dtype=dtype)


def support_spans(weights_1d: Tensor) -> list[tuple[int, int]]:
    """``[start, stop)`` of the non-zero entries of each row of a 1-D tent table
    (:func:`edgedp_runtime.instant.support_spans`)."""
    return runtime_instant.support_spans(weights_1d.detach().cpu().numpy())


@dataclass(frozen=True)
class _PatchGeometry:
    rows: Tensor  # (Pr, H) row tents, float64 CPU
    cols: Tensor  # (Pc, W)
    row_spans: list[tuple[int, int]]
    col_spans: list[tuple[int, int]]
    shape: tuple[int, int]  # common FFT size of the windows
    p: int


def _patch_geometry(h: int, w: int, grid: tuple[int, int], k: int) -> _PatchGeometry:
    rows, cols = tent_weights(h, grid[0]), tent_weights(w, grid[1])
    rs, cs = support_spans(rows), support_spans(cols)
    hmax = max(b - a for a, b in rs)
    wmax = max(b - a for a, b in cs)
    return _PatchGeometry(rows, cols, rs, cs, _fft_shape(hmax, wmax, k), k // 2)


class _PatchBlur(torch.autograd.Function):
    """Blended patchwise blur of a replicate-padded block ``(b, l, H + 2p, W + 2p)`` with kernels
    ``(Pr, Pc, V, l, K, K)`` -> ``(b, V, l, H, W)``; each patch only over its weight's support."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, xp: Tensor, kernels: Tensor, geo: _PatchGeometry
    ) -> Tensor:
        b, l = xp.shape[:2]
        h, w = xp.shape[-2] - 2 * geo.p, xp.shape[-1] - 2 * geo.p
        views = kernels.shape[2]
        rows = geo.rows.to(device=xp.device, dtype=xp.dtype)
        cols = geo.cols.to(device=xp.device, dtype=xp.dtype)
        out = xp.new_zeros(b, views, l, h, w)
        p = geo.p
        for i, (r0, r1) in enumerate(geo.row_spans):
            for j, (c0, c1) in enumerate(geo.col_spans):
                kf = _kernel_rfft2(kernels[i, j], geo.shape)
                win = xp[..., r0 : r1 + 2 * p, c0 : c1 + 2 * p]
                y, _ = _conv_forward(win, kf, geo.shape, p, (r1 - r0, c1 - c0))
                wgt = rows[i, r0:r1, None] * cols[j, None, c0:c1]
                out[..., r0:r1, c0:c1].addcmul_(y, wgt)
        ctx.geo = geo
        ctx.save_for_backward(xp, kernels)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        xp, kernels = ctx.saved_tensors
        geo: _PatchGeometry = ctx.geo
        need_x, need_k = ctx.needs_input_grad[:2]
        p, k = geo.p, kernels.shape[-1]
        rows = geo.rows.to(device=xp.device, dtype=xp.dtype)
        cols = geo.cols.to(device=xp.device, dtype=xp.dtype)
        gx = torch.zeros_like(xp) if need_x else None
        gk = torch.zeros_like(kernels) if need_k else None
        for i, (r0, r1) in enumerate(geo.row_spans):
            for j, (c0, c1) in enumerate(geo.col_spans):
                wgt = rows[i, r0:r1, None] * cols[j, None, c0:c1]
                gw = g[..., r0:r1, c0:c1] * wgt
                win = xp[..., r0 : r1 + 2 * p, c0 : c1 + 2 * p]
                kf = _kernel_rfft2(kernels[i, j], geo.shape) if need_x else None
                xf = torch.fft.rfft2(_embed(win, 0, 0, geo.shape)) if need_k else None
                gxw, gkw = _conv_adjoint(gw, kf, xf, geo.shape, p, tuple(win.shape[-2:]), k)
                if gx is not None and gxw is not None:
                    gx[..., r0 : r1 + 2 * p, c0 : c1 + 2 * p] += gxw
                if gk is not None and gkw is not None:
                    gk[i, j] = gkw
        return gx, gk, None


def _patch_blocks(
    stack: Tensor, kernels: Tensor
) -> tuple[Iterator[tuple[int, int, Tensor]], int, int]:
    """Blocks of the blended patchwise blur and the (batch, layer) block sizes."""
    _check_stack(stack)
    b, layers, h, w = stack.shape
    _check_kernels(kernels, layers, lead=2)
    kernels = kernels.to(device=stack.device, dtype=stack.dtype)
    views, k = int(kernels.shape[2]), int(kernels.shape[-1])
    geo = _patch_geometry(h, w, (int(kernels.shape[0]), int(kernels.shape[1])), k)
    p = geo.p
    esize = stack.element_size()
    item = views * (h + 2 * p) * (w + 2 * p) * esize  # the block's blended output dominates
    bc, lc = _block_sizes(stack.device, b, layers, item)
    k_blocks = kernels.split(lc, dim=3)

    def gen() -> Iterator[tuple[int, int, Tensor]]:
        for bi, row in enumerate(_split2(stack, bc, lc)):
            for li, x in enumerate(row):
                xp = _replicate_pad(x, p, p, p, p)
                yield bi, li, _PatchBlur.apply(xp, k_blocks[li], geo)

    return gen(), bc, lc


def blur_stack_patchwise(stack: Tensor, kernels: Tensor) -> Tensor:
    """Non-uniform blur over a ``Pr x Pc`` patch grid: ``(B, L, H, W) -> (B, V, L, H, W)``.

    ``kernels``: ``(Pr, Pc, V, L, K, K)``, one kernel stack per grid cell (row-major from the
    top-left).  ``out = sum_p w_p * (stack conv kernels[p])`` with ``w`` from
    :func:`patch_blend_weights` (same conventions as :func:`blur_stack_fft`, replicate borders of
    the whole image).  Each ``stack conv kernels[p]`` is computed only where ``w_p > 0``.
    Equal kernels in every cell give exactly the uniform blur.  Differentiable w.r.t. both.
    """
    blocks, _, _ = _patch_blocks(stack, kernels)
    rows: list[list[Tensor]] = []
    for bi, _, y in blocks:
        if bi == len(rows):
            rows.append([])
        rows[bi].append(y)
    out = [torch.cat(r, dim=2) if len(r) > 1 else r[0] for r in rows]
    return torch.cat(out, dim=0) if len(out) > 1 else out[0]


def render_dual_pixel_patchwise(latent: Tensor, weights: Tensor, kernels: Tensor) -> Tensor:
    """Stage 3 re-render ``y_v = sum_i d_i * sum_p w_p * (x_i conv k_{p,i}^v)``, ``(B, 2, H, W)``.

    ``latent``, ``weights``: ``(B, L, H, W)``; ``kernels``: ``(Pr, Pc, 2, L, K, K)``.  See
    :func:`blur_stack_patchwise` and :func:`render_dual_pixel`.
    """
    _check_same_shape(latent, weights)
    blocks, bc, lc = _patch_blocks(latent, kernels)
    return _weighted_sum(blocks, weights, bc, lc)
