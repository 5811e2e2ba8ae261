"""Stage 2 of the fit: the defocus CNN G_D (:mod:`edgedp.models.defocus_net`) predicts MPI alphas; with
the latent map fixed, the re-rendered DP pair is ``y_v = sum_i d_i * B_i^v`` with ``B_i^v = x_i conv f_i^v``
precomputed once, and the re-render loss is an exact per-block quadratic form (:func:`stage2_quadratic_form`),
so each iteration costs the CNN plus O(L^2) per block.  A cross-entropy term towards Stage 1's per-layer
likelihood steers G_D, and after fitting G_D's weights are fused with the full-resolution likelihood
(:func:`fuse_with_likelihood`).

Conventions: CONVENTIONS.md (views left then right, signed radius > 0 behind the focal plane).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..models.defocus_net import DefocusNet, alphas_from_logits, gd_input, upsample_logits
from ..physics.blur import blur_stack_fft, blur_stack_patchwise, over_weights
from .config import FitConfig, ProgressCallback


def fit_defocus_map(
    views: Tensor,
    latent: Tensor,
    kernels: Tensor,
    radii: Tensor,
    config: FitConfig,
    *,
    gd_init: dict[str, Tensor] | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[DefocusNet, Tensor, Tensor, list[float]]:
    """Stage 2: fit G_D's weights so that ``sum_i d_i (x_i conv f_i^v)`` re-renders the views.

    Loss (Eq. 10 + regularizers), per pixel of the full-resolution image:
    ``sum_v ||y_v - sum_i d_i B_i^v||^2 / (H W)`` (``B_i^v = x_i conv f_i^v``, fixed)
    ``+ smooth_weight * sum_p e(p) ||grad x(p)||^2 / (H W)`` with ``x = sum_i d_i x_i`` and the
    edge-aware weight ``e = exp(-|grad y| / s)`` (small on the input's edges, ``s`` = 3x its mean
    gradient) ``+ tv_weight * TV(D)``, ``D = sum_i (2|r_i| + 1) d_i`` on the block grid.

    Speed: G_D's output is smooth (bilinear up-sampling of a grid 8 * gd_scale px apart), so the
    weights are taken constant over ``block x block`` pixels and both quadratic terms reduce to
    per-block Gram matrices computed once: ``d^T G_b d - 2 c_b^T d + const`` (exact for
    block-constant weights).  An iteration then costs the CNN plus O(L^2) per block instead of
    several passes over (L, H, W) tensors (measured at 1008x1344, 18 layers: 3.5 s -> 0.64 s).

    The steps are :func:`stage2_quadratic_form` (the Gram matrices), :func:`train_defocus_net`
    (the optimization) and :func:`gd_alphas` + :func:`fuse_with_likelihood` (the weights);
    :mod:`edgedp.fit.tiling` runs the same steps tile by tile.

    ``kernels``: uniform ``(2, L, K, K)``, or per cell ``(Pr, Pc, 2, L, K, K)`` (a kernel
    field; the fixed blurred stack, and with it the likelihood fusion, then comes from
    :func:`edgedp.physics.blur.blur_stack_patchwise`).

    Returns (G_D, alphas (L, H, W), weights (L, H, W), losses per iteration).
    """
    block = config.stage2_block
    if kernels.dim() == 6:  # per-cell kernels (a kernel field)
        blurred = blur_stack_patchwise(latent[None], kernels)[0]
    else:
        blurred = blur_stack_fft(latent[None], kernels)[0]  # (2, L, H, W): fixed while G_D learns
    form = None
    if config.stage2_iterations > 0:  # a warm start with 0 steps only needs G_D's forward pass and the fusion
        form = stage2_quadratic_form(views, latent, blurred, block, config.smooth_weight)
    net, losses = train_defocus_net(views, form, radii, config, gd_init=gd_init, progress=progress)
    with torch.no_grad():
        alphas = gd_alphas(net, views, config)
        weights = over_weights(alphas)
        if config.fuse_window > 0:
            weights = fuse_with_likelihood(weights, blurred, views, config.fuse_window)
            alphas = alphas_from_weights(weights)
    return net, alphas, weights, losses


def train_defocus_net(
    views: Tensor,
    form: tuple[Tensor, Tensor, Tensor, Tensor] | None,
    radii: Tensor,
    config: FitConfig,
    *,
    gd_init: dict[str, Tensor] | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[DefocusNet, list[float]]:
    """Stage 2's optimization (:func:`fit_defocus_map`): build G_D (seeded, or from ``gd_init``)
    and run ``config.stage2_iterations`` Adam steps on the quadratic form ``form`` =
    :func:`stage2_quadratic_form`'s ``(gram, cross, const, layer_error)`` over
    ``config.stage2_block`` px blocks of the (2, H, W) ``views`` (None with 0 iterations).
    Returns (G_D, losses per iteration)."""
    report = progress or (lambda *args: None)
    layers = int(radii.numel())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = DefocusNet(layers, config.gd_width).to(views.device)
    if gd_init is not None:
        load_gd_state(net, gd_init)
    block = config.stage2_block
    inp = gd_input(views[None], config.gd_scale)
    losses: list[float] = []
    total = config.stage2_iterations
    if total > 0:
        if form is None:
            raise ValueError("train_defocus_net needs the quadratic form for stage2_iterations > 0")
        gram, cross, const, layer_error = form
        hb, wb = cross.shape[-2:]
        # Scale of the data term: the mean best single-layer re-render error (per pixel).
        best = layer_error.min(0).values
        scale = float(best.sum()) + 1e-12
        prior = layer_posterior(layer_error, max(1, round(config.prior_window / block)))
        size_weight = (2 * radii.abs() + 1).to(views)[:, None, None]
        if config.gd_train == "head":
            with torch.no_grad():
                features = net.features(inp)
            opt = torch.optim.Adam(net.head.parameters(), lr=config.lr)
        else:
            opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        # Cosine decay of the step to a tenth: with a constant rate the loss falls, then climbs
        # back once the weights sit near a minimum (measured on synthetic scenes: 2.1 -> 6.5
        # relative loss between steps 80 and 150, and the image worse than after 10 steps).
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.1 * config.lr)

    def logits() -> Tensor:
        return net.head(features) if config.gd_train == "head" else net(inp)

    for step in range(total):
        opt.zero_grad(set_to_none=True)
        alphas = alphas_from_logits(upsample_logits(logits(), (hb, wb), config.gd_scale, block))
        d = over_weights(alphas)[0]  # (L, hb, wb)
        loss = ((d * torch.einsum("ijhw,jhw->ihw", gram, d)).sum() - 2 * (cross * d).sum() + const) / scale
        if config.tv_weight > 0:
            defocus = (d * size_weight).sum(0)
            loss = loss + config.tv_weight * (defocus.diff(dim=-1).abs().mean() + defocus.diff(dim=-2).abs().mean())
        if config.prior_weight > 0:
            loss = loss - config.prior_weight * (prior * d.clamp_min(1e-8).log()).sum(0).mean()
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(float(loss.detach()))
        report("stage 2", step + 1, total, losses[-1])
    return net, losses


def gd_alphas(net: DefocusNet, views: Tensor, config: FitConfig) -> Tensor:
    """G_D's MPI alphas (L, H, W) at full resolution for views (2, H, W): its logits on the pair
    down-scaled by ``config.gd_scale``, bilinearly up-sampled, the bottom layer opaque
    (``over_weights`` of them are G_D's compositing weights)."""
    h, w = views.shape[-2:]
    return alphas_from_logits(upsample_logits(net(gd_input(views[None], config.gd_scale)), (h, w), config.gd_scale))[0]


FUSE_WEIGHT_FLOOR = 1e-6
"""G_D's weights are clamped to at least this before the product with the likelihood, so the
data can still pick a layer G_D ruled out."""


def fuse_with_likelihood(
    weights: Tensor, blurred: Tensor, views: Tensor, window: int, *, temperature: float | None = None
) -> Tensor:
    """Per-pixel refinement of G_D's weights: ``d_i ~ d_i^GD * q_i`` (normalized over layers)
    with ``q = softmax(-e / T)`` the full-resolution layer likelihood from each layer's
    re-render error ``e_i`` box-averaged over ``window`` px (``T`` half the mean best error).

    G_D's map is smooth at its grid spacing (8 * gd_scale px); the likelihood restores
    pixel-accurate depth edges where the data decides, and defers to G_D where it does not.
    Inputs (L, H, W), (2, L, H, W), (2, H, W); returns (L, H, W).  ``temperature``: ``T`` given
    (a tile of a frame uses the frame's, :func:`posterior_temperature`); None: from these inputs.
    """
    error = rerender_error(blurred, views)  # (L, H, W)
    posterior = layer_posterior(error, window, temperature=temperature) * weights.clamp_min(FUSE_WEIGHT_FLOOR)
    return posterior / posterior.sum(0, keepdim=True)


def alphas_from_weights(weights: Tensor) -> Tensor:
    """Invert the over operator: alphas (L, H, W) whose :func:`over_weights` are ``weights``
    (which sum to 1 over layers): ``a_i = d_i / sum_{j <= i} d_j``, ``a_0 = 1``."""
    below = weights.cumsum(0)
    return (weights / below.clamp_min(1e-12)).clamp(0, 1)


def stage2_quadratic_form(
    views: Tensor,
    latent: Tensor,
    blurred: Tensor,
    block: int,
    smooth_weight: float,
    *,
    grad_scale: float | None = None,
    core: tuple[int, int, int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-block Gram matrices of stage 2's loss for block-constant weights d.

    ``blurred`` (2, L, H, W) is the latent map blurred by each layer's kernels.
    Returns ``gram`` (L, L, hb, wb) = sum over the block's pixels of ``sum_v B_i^v B_j^v +
    smooth_weight * e * grad x_i . grad x_j``, ``cross`` (L, hb, wb) = ``sum_v B_i^v y_v``, the
    scalar ``const = sum_v ||y_v||^2`` and ``layer_error`` (L, hb, wb), each layer's re-render
    error alone; images are zero-padded to whole blocks (padding adds 0).

    A tile of a frame (:mod:`edgedp.fit.tiling`): ``core = (y0, y1, x0, x1)`` is the region of these
    arrays whose blocks are wanted (``y0``, ``x0`` and, unless they end the arrays, ``y1``, ``x1``
    multiples of ``block`` in the frame); the gradients at its last row / column use the pixels
    beyond it.  ``grad_scale``: the frame's mean input-gradient magnitude
    (:func:`input_gradient_magnitude`), which sets the edge weight ``e``; None: these views'.
    """
    h, w = views.shape[-2:]
    y0, y1, x0, x1 = (0, h, 0, w) if core is None else core
    layers = latent.shape[0]
    grad_in = input_gradient_magnitude(views)
    if grad_scale is None:
        grad_scale = grad_in.mean()
    edge = torch.exp(-grad_in / (3 * grad_scale + 1e-12))
    gx = torch.nn.functional.pad(latent.diff(dim=-1), (0, 1))
    gy = torch.nn.functional.pad(latent.diff(dim=-2), (0, 0, 0, 1))
    if core is not None:
        views, blurred, edge = views[..., y0:y1, x0:x1], blurred[..., y0:y1, x0:x1], edge[y0:y1, x0:x1]
        gx, gy = gx[..., y0:y1, x0:x1], gy[..., y0:y1, x0:x1]
        h, w = y1 - y0, x1 - x0
    ph, pw = (-h) % block, (-w) % block

    def pool(x: Tensor) -> Tensor:  # (..., H, W) -> (..., hb, wb) block sums
        x = torch.nn.functional.pad(x, (0, pw, 0, ph))
        lead = x.shape[:-2]
        y = torch.nn.functional.avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]), block) * (block * block)
        return y.reshape(*lead, *y.shape[-2:])

    hb, wb = (h + ph) // block, (w + pw) // block
    # Every block's Gram matrix is X X^T of its (L, F) feature matrix: the block's pixels of
    # B^L and B^R, and of sqrt(smooth_weight * e) * grad x_i.  One batched matmul per band of
    # block rows (bounded memory) is ~9x faster than L(L+1)/2 full-size products and poolings.
    weight = (smooth_weight * edge).sqrt()
    features = [blurred[0], blurred[1]] + ([gx * weight, gy * weight] if smooth_weight > 0 else [])
    gram = torch.empty(hb, wb, layers, layers, dtype=views.dtype, device=views.device)
    band = max(1, (8 << 20) // max(1, wb * layers * block * block * len(features)))  # ~32 MiB of features
    for r0 in range(0, hb, band):
        r1 = min(hb, r0 + band)
        y0, y1 = r0 * block, min(h, r1 * block)
        parts = []
        for f in features:
            x = torch.nn.functional.pad(f[:, y0:y1], (0, pw, 0, r1 * block - y1))  # (L, rows, Wp)
            x = x.reshape(layers, r1 - r0, block, wb, block).permute(1, 3, 0, 2, 4)
            parts.append(x.reshape((r1 - r0) * wb, layers, block * block))
        feats = torch.cat(parts, dim=2)  # (blocks, L, F)
        gram[r0:r1] = torch.bmm(feats, feats.transpose(1, 2)).reshape(r1 - r0, wb, layers, layers)
    gram = gram.permute(2, 3, 0, 1).contiguous()  # (L, L, hb, wb)
    cross = pool((blurred * views[:, None]).sum(0))
    const = views.square().sum()
    layer_error = pool(rerender_error(blurred, views))  # (L, hb, wb)
    return gram, cross, const, layer_error


def input_gradient_magnitude(views: Tensor) -> Tensor:
    """``|grad y|`` (H, W) of the mean view of (2, H, W) views (forward differences, 0 beyond the
    last row / column): what stage 2's edge-aware smoothness weight is made of."""
    mean_view = views.mean(0)
    gy_in = torch.nn.functional.pad(mean_view.diff(dim=-2), (0, 0, 0, 1))
    gx_in = torch.nn.functional.pad(mean_view.diff(dim=-1), (0, 1))
    return (gx_in.square() + gy_in.square()).sqrt()


def layer_posterior(layer_error: Tensor, window: int, *, temperature: float | None = None) -> Tensor:
    """Soft per-block choice of layer from Stage 1 alone: (L, hb, wb) errors -> (L, hb, wb)
    probabilities ``softmax(-e / T)`` of the box-averaged (``window`` blocks) errors, with ``T``
    half the mean of the best layer's error (a scale-free temperature,
    :func:`posterior_temperature`; or ``temperature`` when given)."""
    e = box_error(layer_error, window)
    if temperature is None:
        temperature = posterior_temperature(float(e.min(0).values.mean()))
    return torch.softmax(-e / temperature, dim=0)


def box_error(layer_error: Tensor, window: int) -> Tensor:
    """(L, h, w) errors box-averaged over ``2 (window // 2) + 1`` px (only the pixels inside the
    image count at its borders); unchanged for ``window <= 1``."""
    if window <= 1:
        return layer_error
    return torch.nn.functional.avg_pool2d(layer_error[None], 2 * (window // 2) + 1, 1, window // 2, count_include_pad=False)[0]


def posterior_temperature(mean_best_error: float) -> float:
    """The likelihood's temperature ``T`` from the mean over the frame of the best layer's
    box-averaged error: half of it (plus 1e-20, so a noise-free scene does not divide by 0)."""
    return 0.5 * float(mean_best_error) + 1e-20


def rerender_error(blurred: Tensor, views: Tensor) -> Tensor:
    """Each layer's re-render error alone, per pixel: ``sum_v (B_i^v - y_v)^2``, (2, L, H, W) and
    (2, H, W) -> (L, H, W)."""
    return (blurred - views[:, None]).square().sum(0)


def load_gd_state(net: DefocusNet, state: dict[str, Tensor]) -> None:
    """Load G_D weights; a missing key or a shape mismatch is a one-line InputError."""
    own = net.state_dict()
    for key, value in own.items():
        if key not in state:
            raise InputError(f"warm start has no G_D parameter {key!r}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise InputError(
                f"warm start G_D parameter {key!r} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)} "
                f"(other layer count or width?)"
            )
    net.load_state_dict({k: state[k].to(own[k]) for k in own})
