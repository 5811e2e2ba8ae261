"""Tests for edgedp.physics.blur: blur orientation/borders, FFT == direct, adjoints, compositing,
DP re-render, patchwise non-uniform blur, gradients, dtype/device handling."""

from __future__ import annotations

import pytest
import torch

from edgedp.physics import blur as P

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.rand(*shape, generator=gen(seed), dtype=dtype)


def pyramid_kernels(
    views: int, layers: int, k: int, *, seed: int = 0, dtype: torch.dtype = F64
) -> torch.Tensor:
    """Random non-negative normalized kernels; layer i non-zero in its central (2i+1)^2 only."""
    ker = rand(views, layers, k, k, seed=seed, dtype=dtype) + 0.01
    c = k // 2
    mask = torch.zeros(layers, k, k, dtype=dtype)
    for i in range(layers):
        r = min(i, c)
        mask[i, c - r : c + r + 1, c - r : c + r + 1] = 1
    ker = ker * mask
    return ker / ker.sum(dim=(-1, -2), keepdim=True)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the CPU chunking to split batch and layers into many blocks."""
    monkeypatch.setattr(P, "CPU_CHUNK_BYTES", 1)


# ------------------------------------------------------------------------------------------
# uniform blur


@pytest.mark.parametrize(
    ("b", "layers", "k", "h", "w"),
    [(1, 1, 1, 37, 53), (2, 3, 3, 37, 53), (1, 4, 7, 37, 53), (3, 2, 11, 37, 53), (1, 2, 15, 7, 9)],
)
def test_fft_matches_direct_float64(b: int, layers: int, k: int, h: int, w: int) -> None:
    x = rand(b, layers, h, w, seed=1)
    ker = pyramid_kernels(2, layers, k, seed=2)
    fft = P.blur_stack_fft(x, ker)
    direct = P.blur_stack_direct(x, ker)
    assert fft.shape == direct.shape == (b, 2, layers, h, w)
    assert rel_err(fft, direct) < 1e-12


@pytest.mark.parametrize(("b", "layers", "k"), [(1, 3, 5), (2, 5, 9)])
def test_fft_matches_direct_float32(b: int, layers: int, k: int) -> None:
    x = rand(b, layers, 37, 53, seed=3, dtype=torch.float32)
    ker = pyramid_kernels(2, layers, k, seed=4, dtype=torch.float32)
    fft = P.blur_stack_fft(x, ker)
    assert fft.dtype == torch.float32
    assert rel_err(fft, P.blur_stack_direct(x, ker)) < 1e-5


def test_chunked_equals_unchunked(tiny_chunks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    x = rand(3, 4, 37, 53, seed=5)
    ker = pyramid_kernels(2, 4, 7, seed=6)
    chunked = P.blur_stack_fft(x, ker)
    d = rand(3, 4, 37, 53, seed=7)
    chunked_render = P.render_dual_pixel(x, d, ker)
    monkeypatch.setattr(P, "CPU_CHUNK_BYTES", 2**40)
    assert torch.allclose(chunked, P.blur_stack_fft(x, ker), rtol=0, atol=1e-13)
    assert torch.allclose(chunked_render, P.render_dual_pixel(x, d, ker), rtol=0, atol=1e-13)


def test_blocks_split_batch_and_layers(tiny_chunks: None) -> None:
    _, bc, lc = P._uniform_blocks(rand(3, 4, 9, 11), pyramid_kernels(2, 4, 3))
    assert (bc, lc) == (1, 1)


@pytest.mark.parametrize("method", ["fft", "direct"])
def test_delta_kernel_is_identity(method: str) -> None:
    x = rand(2, 3, 37, 53, seed=8)
    ker = torch.zeros(2, 3, 7, 7, dtype=F64)
    ker[..., 3, 3] = 1
    y = P.blur_stack(x, ker, method)  # type: ignore[arg-type]
    assert torch.allclose(y, x.unsqueeze(1).expand(2, 2, 3, 37, 53), atol=1e-13)


@pytest.mark.parametrize("method", ["fft", "direct"])
def test_orientation_shift_left_and_up(method: str) -> None:
    """Mass one column left of the centre moves the image one pixel left: y[:, c] == x[:, c + 1]."""
    x = rand(1, 1, 37, 53, seed=9)
    k = 7
    left = torch.zeros(1, 1, k, k, dtype=F64)
    left[..., k // 2, k // 2 - 1] = 1
    y = P.blur_stack(x, left, method)[:, 0]  # type: ignore[arg-type]
    assert torch.allclose(y[..., :, :-1], x[..., :, 1:], atol=1e-13)
    assert torch.allclose(y[..., :, -1], x[..., :, -1], atol=1e-13)  # replicate border
    up = torch.zeros(1, 1, k, k, dtype=F64)
    up[..., k // 2 - 1, k // 2] = 1
    y = P.blur_stack(x, up, method)[:, 0]  # type: ignore[arg-type]
    assert torch.allclose(y[..., :-1, :], x[..., 1:, :], atol=1e-13)


def test_point_source_shows_the_psf() -> None:
    """True convolution: a point at p shows up as k(u) at p + u."""
    x = torch.zeros(1, 1, 21, 23, dtype=F64)
    x[0, 0, 10, 11] = 1
    ker = rand(2, 1, 5, 5, seed=10)
    y = P.blur_stack_fft(x, ker)[0, :, 0]
    assert torch.allclose(y[:, 8:13, 9:14], ker[:, 0], atol=1e-13)
    assert y.sum().item() == pytest.approx(ker.sum().item())


def test_replicate_border() -> None:
    """A constant image stays constant under a normalized kernel, borders included."""
    x = torch.full((1, 2, 9, 13), 0.7, dtype=F64)
    y = P.blur_stack_fft(x, pyramid_kernels(2, 2, 11, seed=11))
    assert torch.allclose(y, torch.full_like(y, 0.7), atol=1e-13)


def test_adjoint_is_rotated_kernel_in_interior() -> None:
    """<A x, y> == <x, A^T y> with A^T = convolution with the 180-degree rotated kernel, for x and
    y vanishing within K // 2 of the border (where replicate padding only sees zeros)."""
    k, h, w = 7, 37, 53
    p = k // 2
    ker = rand(2, 3, k, k, seed=12)
    x = torch.zeros(1, 3, h, w, dtype=F64)
    y = torch.zeros(1, 2, 3, h, w, dtype=F64)
    x[..., p:-p, p:-p] = rand(1, 3, h - 2 * p, w - 2 * p, seed=13)
    y[..., p:-p, p:-p] = rand(1, 2, 3, h - 2 * p, w - 2 * p, seed=14)
    ax = P.blur_stack_fft(x, ker)
    aty = torch.stack([P.blur_stack_fft(y[:, v], ker.flip(-1, -2))[:, v] for v in range(2)], dim=1)
    lhs = (ax * y).sum()
    rhs = (x.unsqueeze(1) * aty).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)


@pytest.mark.parametrize("chunked", [False, True])
def test_fft_gradients_match_direct_autograd(
    chunked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-written adjoints (latent, weights, kernels) equal autograd through conv2d,
    borders included."""
    if chunked:
        monkeypatch.setattr(P, "CPU_CHUNK_BYTES", 1)
    shape = (2, 3, 19, 27)
    grads = []
    for method in ("fft", "direct"):
        x = rand(*shape, seed=15).requires_grad_(True)
        wt = rand(*shape, seed=16).requires_grad_(True)
        ker = pyramid_kernels(2, 3, 9, seed=17).requires_grad_(True)
        out = P.render_dual_pixel(x, wt, ker, method=method)  # type: ignore[arg-type]
        (out * rand(*out.shape, seed=18)).sum().backward()
        grads.append((x.grad, wt.grad, ker.grad))
    for a, b in zip(*grads):
        assert a is not None and b is not None
        assert rel_err(a, b) < 1e-11


def test_kernel_spectrum_reuse_is_identical() -> None:
    x = rand(2, 3, 37, 53, seed=19)
    ker = pyramid_kernels(2, 3, 9, seed=20)
    spec = P.kernel_spectrum(ker, (37, 53))
    assert spec.values.shape == (2, 3, *spec.padded_shape[:1], spec.padded_shape[1] // 2 + 1)
    assert spec.padded_shape[0] >= 37 + 8 and spec.padded_shape[1] >= 53 + 8
    assert spec.padded_shape[1] % 2 == 0 and spec.kernel_size == 9 and spec.image_shape == (37, 53)
    a, b = P.blur_stack_fft(x, spec), P.blur_stack_fft(x, spec)
    assert torch.equal(a, b)
    assert torch.allclose(a, P.blur_stack_fft(x, ker), rtol=0, atol=1e-14)
    wt = rand(2, 3, 37, 53, seed=21)
    assert torch.equal(P.render_dual_pixel(x, wt, spec), P.render_dual_pixel(x, wt, spec))


def test_fast_size() -> None:
    assert P.fast_size(1042) == 1050
    assert P.fast_size(1378, even=True) == 1400
    assert P.fast_size(11) == 12 and P.fast_size(13, even=True) == 14
    assert P._fft_shape(1008, 1344, 35) == (1050, 1400)


def test_kernel_spectrum_mismatches_raise() -> None:
    spec = P.kernel_spectrum(pyramid_kernels(2, 3, 5), (37, 53))
    with pytest.raises(ValueError, match="built for images"):
        P.blur_stack_fft(rand(1, 3, 36, 53), spec)
    with pytest.raises(ValueError, match="complex64"):
        P.blur_stack_fft(rand(1, 3, 37, 53, dtype=torch.float32), spec)
    with pytest.raises(ValueError, match="layers"):
        P.blur_stack_fft(rand(1, 2, 37, 53), spec)
    with pytest.raises(ValueError, match="KernelSpectrum"):
        P.render_dual_pixel(rand(1, 3, 37, 53), rand(1, 3, 37, 53), spec, method="direct")


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="K odd"):
        P.blur_stack_fft(rand(1, 2, 9, 9), rand(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, L, H, W\)"):
        P.blur_stack_direct(rand(2, 9, 9), rand(2, 2, 3, 3))
    with pytest.raises(ValueError, match="layers"):
        P.blur_stack_direct(rand(1, 3, 9, 9), rand(2, 2, 3, 3))
    with pytest.raises(ValueError, match="must match"):
        P.render_dual_pixel(rand(1, 2, 9, 9), rand(1, 2, 9, 8), rand(2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"\(Pr, Pc, V, L, K, K\)"):
        P.blur_stack_patchwise(rand(1, 2, 9, 9), rand(2, 2, 3, 3))


# ------------------------------------------------------------------------------------------
# compositing and re-render


def test_over_weights_matches_loop_and_sum_identity() -> None:
    a = rand(2, 5, 7, 9, seed=22)
    d = P.over_weights(a)
    ref = torch.empty_like(a)
    for i in range(5):
        t = a[:, i].clone()
        for j in range(i + 1, 5):
            t = t * (1 - a[:, j])
        ref[:, i] = t
    assert torch.allclose(d, ref, atol=1e-15)
    assert torch.allclose(d.sum(1), 1 - (1 - a).prod(1), atol=1e-14)
    a[:, 0] = 1  # opaque bottom layer: a partition of unity
    assert torch.allclose(P.over_weights(a).sum(1), torch.ones(2, 7, 9, dtype=F64), atol=1e-14)
    # the top layer is never occluded; a fully opaque top layer hides everything below
    assert torch.equal(d[:, -1], a[:, -1])
    a[:, -1] = 1
    assert torch.all(P.over_weights(a)[:, :-1] == 0)


def test_composite() -> None:
    x, d = rand(2, 4, 7, 9, seed=23), rand(2, 4, 7, 9, seed=24)
    ref = sum(d[:, i] * x[:, i] for i in range(4))
    assert torch.allclose(P.composite(x, d), ref, atol=1e-14)  # type: ignore[arg-type]
    blurred = rand(2, 2, 4, 7, 9, seed=25)
    views = P.composite(blurred, d.unsqueeze(1))
    assert views.shape == (2, 2, 7, 9)
    assert torch.allclose(views[:, 1], P.composite(blurred[:, 1], d), atol=1e-14)


@pytest.mark.parametrize("use_spectrum", [False, True])
def test_render_dual_pixel_equals_explicit_sum(use_spectrum: bool) -> None:
    b, layers, h, w = 2, 4, 37, 53
    x = rand(b, layers, h, w, seed=26)
    d = P.over_weights(rand(b, layers, h, w, seed=27))
    ker = pyramid_kernels(2, layers, 7, seed=28)
    kin = P.kernel_spectrum(ker, (h, w)) if use_spectrum else ker
    y = P.render_dual_pixel(x, d, kin)
    assert y.shape == (b, 2, h, w)
    for v in range(2):
        ref = sum(
            d[:, i] * P.blur_stack_direct(x[:, i : i + 1], ker[v : v + 1, i : i + 1])[:, 0, 0]
            for i in range(layers)
        )
        assert torch.allclose(y[:, v], ref, atol=1e-12)  # type: ignore[arg-type]
    assert torch.allclose(P.render_dual_pixel(x, d, ker, method="direct"), y, atol=1e-12)


def test_render_left_right_mirror() -> None:
    """Mirrored kernels (right = left rotated 180 degrees) on a mirrored scene swap the views."""
    x = rand(1, 3, 37, 53, seed=29)
    d = P.over_weights(rand(1, 3, 37, 53, seed=30))
    left = pyramid_kernels(1, 3, 7, seed=31)
    ker = torch.cat([left, left.flip(-1, -2)], dim=0)
    y = P.render_dual_pixel(x, d, ker)
    y_rot = P.render_dual_pixel(x.flip(-1, -2), d.flip(-1, -2), ker)
    assert torch.allclose(y_rot[:, 0], y[:, 1].flip(-1, -2), atol=1e-12)


def _gradcheck(fn, *inputs: torch.Tensor) -> bool:  # type: ignore[no-untyped-def]
    return torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_render_dual_pixel() -> None:
    x = rand(1, 2, 7, 9, seed=32).requires_grad_(True)
    a = (0.1 + 0.8 * rand(1, 2, 7, 9, seed=33)).requires_grad_(True)
    ker = pyramid_kernels(2, 2, 3, seed=34).requires_grad_(True)
    assert _gradcheck(lambda x, a, k: P.render_dual_pixel(x, P.over_weights(a), k), x, a, ker)


def test_gradcheck_render_with_differentiable_spectrum() -> None:
    x = rand(1, 2, 7, 9, seed=35).requires_grad_(True)
    d = rand(1, 2, 7, 9, seed=36)
    ker = pyramid_kernels(2, 2, 3, seed=37).requires_grad_(True)
    assert _gradcheck(lambda x, k: P.render_dual_pixel(x, d, P.kernel_spectrum(k, (7, 9))), x, ker)


def test_gradcheck_blur_chunked(tiny_chunks: None) -> None:
    x = rand(2, 2, 5, 7, seed=38).requires_grad_(True)
    ker = pyramid_kernels(2, 2, 3, seed=39).requires_grad_(True)
    assert _gradcheck(P.blur_stack_fft, x, ker)


def test_gradcheck_render_patchwise() -> None:
    x = rand(1, 2, 7, 9, seed=40).requires_grad_(True)
    a = (0.1 + 0.8 * rand(1, 2, 7, 9, seed=41)).requires_grad_(True)
    ker = rand(2, 2, 2, 2, 3, 3, seed=42).requires_grad_(True)
    def render(x: torch.Tensor, a: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return P.render_dual_pixel_patchwise(x, P.over_weights(a), k)

    assert _gradcheck(render, x, a, ker)


# ------------------------------------------------------------------------------------------
# patchwise (Stage 3)


@pytest.mark.parametrize(
    ("h", "w", "grid"), [(37, 53, (1, 1)), (37, 53, (3, 4)), (37, 53, (5, 2)), (12, 31, (4, 6))]
)
def test_patch_blend_weights_partition_of_unity(h: int, w: int, grid: tuple[int, int]) -> None:
    wt = P.patch_blend_weights((h, w), grid, dtype=F64)
    assert wt.shape == (*grid, h, w) and wt.dtype == F64
    assert torch.all(wt >= 0)
    assert torch.allclose(wt.sum((0, 1)), torch.ones(h, w, dtype=F64), atol=1e-14)
    # support of each weight spans at most the two cells around its centre in each direction
    for i in range(grid[0]):
        rows = torch.nonzero(wt[i].sum((0, 2)) > 0).flatten()
        assert rows.numel() <= 2 * h / grid[0] + 1
        assert rows.min() <= round((i + 0.5) * h / grid[0]) <= rows.max()
    # smooth (bilinear): neighbouring pixels differ by at most one cell's slope
    step = wt.diff(dim=-1).abs().max().item()
    assert step <= grid[1] / w + 1e-12


def test_patch_blend_weights_tent_values() -> None:
    wt = P.patch_blend_weights((4, 8), (1, 2), dtype=F64)[0]  # centres at columns 1.5 and 5.5
    expected = torch.tensor([1, 1, 0.875, 0.625, 0.375, 0.125, 0, 0], dtype=F64)
    assert torch.allclose(wt[0, 0], expected)
    assert torch.allclose(wt[1, 0], 1 - expected)


def test_patch_blend_weights_device_dtype() -> None:
    wt = P.patch_blend_weights((5, 6), (2, 2))
    assert wt.dtype == torch.float32 and wt.device.type == "cpu"


def _naive_patchwise(x: torch.Tensor, ker: torch.Tensor) -> torch.Tensor:
    pr, pc = ker.shape[:2]
    bw = P.patch_blend_weights((x.shape[-2], x.shape[-1]), (pr, pc), dtype=x.dtype)
    out = torch.zeros(x.shape[0], ker.shape[2], *x.shape[1:], dtype=x.dtype)
    for i in range(pr):
        for j in range(pc):
            out = out + bw[i, j] * P.blur_stack_direct(x, ker[i, j])
    return out


@pytest.mark.parametrize(
    ("grid", "k", "b"), [((1, 1), 5, 1), ((3, 4), 5, 2), ((5, 2), 9, 1), ((2, 3), 15, 1)]
)
def test_patchwise_equals_naive(grid: tuple[int, int], k: int, b: int) -> None:
    x = rand(b, 3, 37, 53, seed=43)
    ker = rand(*grid, 2, 3, k, k, seed=44)
    ker = ker / ker.sum((-1, -2), keepdim=True)
    y = P.blur_stack_patchwise(x, ker)
    assert y.shape == (b, 2, 3, 37, 53)
    assert rel_err(y, _naive_patchwise(x, ker)) < 1e-12


def test_patchwise_float32_and_chunked(tiny_chunks: None) -> None:
    x = rand(2, 3, 37, 53, seed=45, dtype=torch.float32)
    ker = rand(3, 2, 2, 3, 7, 7, seed=46, dtype=torch.float32)
    ker = ker / ker.sum((-1, -2), keepdim=True)
    y = P.blur_stack_patchwise(x, ker)
    assert y.dtype == torch.float32
    assert rel_err(y, _naive_patchwise(x, ker)) < 1e-5


def test_patchwise_equal_kernels_is_uniform_blur() -> None:
    x = rand(2, 3, 37, 53, seed=47)
    ker = pyramid_kernels(2, 3, 9, seed=48)
    y = P.blur_stack_patchwise(x, ker.expand(4, 3, *ker.shape))
    assert rel_err(y, P.blur_stack_fft(x, ker)) < 1e-12
    d = rand(2, 3, 37, 53, seed=49)
    r = P.render_dual_pixel_patchwise(x, d, ker.expand(4, 3, *ker.shape))
    assert rel_err(r, P.render_dual_pixel(x, d, ker)) < 1e-12


def test_render_patchwise_equals_explicit_sum() -> None:
    x, d = rand(1, 3, 37, 53, seed=50), rand(1, 3, 37, 53, seed=51)
    ker = rand(3, 4, 2, 3, 5, 5, seed=52)
    y = P.render_dual_pixel_patchwise(x, d, ker)
    ref = P.composite(_naive_patchwise(x, ker), d.unsqueeze(1))
    assert y.shape == (1, 2, 37, 53)
    assert rel_err(y, ref) < 1e-12


def test_patchwise_gradients_match_naive(tiny_chunks: None) -> None:
    grads = []
    for fn in (P.blur_stack_patchwise, _naive_patchwise):
        x = rand(2, 2, 19, 23, seed=53).requires_grad_(True)
        ker = rand(2, 3, 2, 2, 5, 5, seed=54).requires_grad_(True)
        out = fn(x, ker)
        (out * rand(*out.shape, seed=55)).sum().backward()
        grads.append((x.grad, ker.grad))
    for a, b in zip(*grads):
        assert a is not None and b is not None
        assert rel_err(a, b) < 1e-11


# ------------------------------------------------------------------------------------------
# device / dtype


def test_dtype_follows_input() -> None:
    x32 = rand(1, 2, 9, 11, dtype=torch.float32)
    ker64 = pyramid_kernels(2, 2, 3)
    for fn in (P.blur_stack_fft, P.blur_stack_direct):
        assert fn(x32, ker64).dtype == torch.float32
        assert fn(x32.double(), ker64.float()).dtype == F64
    assert P.render_dual_pixel(x32, x32, ker64).dtype == torch.float32
    assert P.blur_stack_patchwise(x32, ker64.expand(2, 2, *ker64.shape)).dtype == torch.float32
    assert P.kernel_spectrum(ker64, (9, 11)).values.dtype == torch.complex128
    assert P.kernel_spectrum(ker64.float(), (9, 11)).values.dtype == torch.complex64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_follows_input() -> None:
    x = rand(1, 3, 37, 53, dtype=torch.float32).cuda()
    ker = pyramid_kernels(2, 3, 7, dtype=torch.float32)
    y = P.render_dual_pixel(x, x, ker.cuda())
    assert y.device.type == "cuda"
    assert rel_err(y.cpu(), P.render_dual_pixel(x.cpu(), x.cpu(), ker)) < 1e-5
    yp = P.blur_stack_patchwise(x, ker.cuda().expand(2, 2, *ker.shape))
    assert rel_err(yp.cpu(), P.blur_stack_fft(x.cpu(), ker)) < 1e-5
