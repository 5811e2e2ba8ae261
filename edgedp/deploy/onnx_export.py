"""Export a fitted scene bundle to ONNX: ``render.onnx`` and ``refocus.onnx`` plus ``export.json``.

``render.onnx``
    input ``latent`` (1, L, H, W) float32; outputs ``left``, ``right``, ``allinfocus``
    (1, 1, H, W).  ``view_v = sum_i d_i (x_i conv f_i^v)`` with the compositing weights ``d``
    and the kernels (uniform, or the stage-3 patch kernels blended with the tents of
    :func:`edgedp.physics.blur.patch_blend_weights`) baked in as constants; ``allinfocus =
    sum_i d_i x_i``.  Conventions as in CONVENTIONS.md: true convolution, replicated borders
    (ONNX ``Pad`` mode ``edge``).

    Factorization (why it is fast): each layer's kernel pair is cropped to its support (layer i
    needs about ``(2|r_i|+1)^2`` taps, not ``K^2``), then the pair is factored jointly by an SVD
    of ``[f_left | f_right]``: a shared bank of ``q`` vertical ``m x 1`` filters followed by a
    ``1 x m`` Conv with ``q`` inputs and 2 outputs (one per view).  ``q`` is the smallest rank
    whose residual has an L1 norm <= ``kernel_tol`` for both views (the residual bounds the
    output error by ``kernel_tol * max|x|``); where the factored form is not cheaper, the cropped
    kernel is used as one dense Conv.  No FFT/DFT, no CumSum/cumprod: plain Pad/Conv/Mul/Add.

``refocus.onnx``
    inputs ``image`` (1, 1, H, W), ``focus`` () and ``aperture`` () float32; output ``image``
    (1, 1, H, W) named ``refocused`` (ONNX names are SSA: an output cannot share the input's name).  New blur radius per pixel ``rho = aperture * (defocus - focus)``; the output
    is ``sum_j w_j(|rho|) (image conv b_j)`` over a bank of full-aperture kernels ``b_j``
    (``(left + right) / 2`` of the largest-radius layer, resized to radius ``j = 0..R`` with
    :func:`edgedp.physics.kernels.resize_kernel`), ``w_j`` hat (linear) interpolation weights over
    ``|rho|`` clamped to ``[0, R]``.  ``aperture = 0`` returns the image exactly (level 0 is a
    delta).

Sidecar ``export.json``: :mod:`edgedp_runtime.schema` defines it (one definition for the exporter
and the runners); a scene export has ``"source": "scene"``, the graphs render / refocus / gd and
``"bundle"`` (absolute path of the scene bundle folder).

All float inputs are float32; scalars ``focus`` / ``aperture`` are 0-d tensors.

Error measures (both graphs): ``max_abs = max |onnx - torch|``, ``max_rel = max_abs /
max |torch|``; a graph passes when ``max_abs <= atol + rtol * max |torch|``.  ``fp16=True`` runs
the graphs' FP16 emulation (:func:`edgedp.deploy.onnx_tools.emulate_fp16`) against the same references.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedp_runtime import schema
from edgedp_runtime.errors import RunnerError

from .. import __version__
from . import onnx_tools
from .onnx_finalize import finalize_graph
from ..errors import InputError, OutputError
from ..io.writers import json_ready, write_json

__all__ = [
    "FORBIDDEN_OPS",
    "ExportConfig",
    "RenderModule",
    "RefocusModule",
    "export_scene",
    "export_torch",
    "factor_kernels",
    "read_sidecar",
    "refocus_reference",
    "render_reference",
    "verify_export",
]

RENDER = schema.GRAPHS["render"]
REFOCUS = schema.GRAPHS["refocus"]
GD = schema.GRAPHS["gd"]
INPUT_NORMALIZATION = "linear sensor values on the fit's normalized scale (~[0, 1], unclipped), float32"
#: Ops the graphs must never contain (TensorRT 8.5 / ORT CUDA lack them or they break compositing).
FORBIDDEN_OPS = frozenset({"DFT", "STFT", "CumSum", "Loop", "Scan", "If"})


@dataclass(frozen=True)
class ExportConfig:
    """Export settings.

    opset: ONNX opset of the saved graphs (17: the last TensorRT 8.5 takes).
    kernel_tol: L1 norm allowed for the low-rank residual of each kernel (bounds the re-render
        error by ``kernel_tol * max|latent|``).
    refocus_levels: largest radius R of the refocus bank (levels 0..R px); None: ceil(max|r_i|).
    atol, rtol: verification tolerances (see the module docstring).
    """

    opset: int = 17
    kernel_tol: float = 2e-4
    refocus_levels: int | None = None
    atol: float = 1e-4
    rtol: float = 1e-3


# ---------------------------------------------------------------------------------------------
# kernel factorization


@dataclass
class _Factor:
    """One cropped, factored kernel stack for the correlation ``y = x_pad (*) g``.

    pad: (top, bottom, left, right) replicate padding; dense: (V, 1, mh, mw) correlation
    weights, or None; vert: (q, 1, mh, 1) and horz: (V, q, 1, mw) when factored.
    """

    pad: tuple[int, int, int, int]
    dense: Tensor | None
    vert: Tensor | None
    horz: Tensor | None
    macs: int


def factor_kernels(kernels: Tensor, tol: float) -> _Factor:
    """Factor a stack of V true-convolution kernels ``(V, K, K)`` (same centre) for export."""
    v, k, _ = kernels.shape
    c = k // 2
    g = kernels.detach().double().flip(-1, -2)  # correlation weights
    nz = g.abs().amax(0) > 0
    rows = torch.nonzero(nz.any(1)).flatten().tolist() or [c]
    cols = torch.nonzero(nz.any(0)).flatten().tolist() or [c]
    a, b = min(rows[0], c), max(rows[-1], c)
    e, f = min(cols[0], c), max(cols[-1], c)
    gc = g[:, a : b + 1, e : f + 1]
    mh, mw = gc.shape[-2:]
    pad = (c - a, b - c, c - e, f - c)
    dense_macs = v * mh * mw
    joint = torch.cat(list(gc), dim=1)  # (mh, V * mw)
    u, s, vh = torch.linalg.svd(joint, full_matrices=False)
    best = None
    for q in range(1, min(mh, v * mw) + 1):
        macs = q * mh + v * q * mw
        if macs >= dense_macs:
            break
        approx = (u[:, :q] * s[:q]) @ vh[:q]
        res = (approx - joint).reshape(mh, v, mw).abs().sum(dim=(0, 2))
        if float(res.max()) <= tol:
            best = q
            break
    if best is None:
        return _Factor(pad, gc[:, None].float(), None, None, dense_macs)
    q = best
    vert = u[:, :q].T.reshape(q, 1, mh, 1)
    horz = (s[:q, None] * vh[:q]).reshape(q, v, mw).permute(1, 0, 2).reshape(v, q, 1, mw)
    return _Factor(pad, None, vert.float(), horz.float(), q * mh + v * q * mw)


def _apply(x: Tensor, fac: _Factor) -> Tensor:
    """``(1, 1, h', w')`` (unpadded region source) -> ``(1, V, h, w)`` via replicate pad + convs."""
    t, bo, le, ri = fac.pad
    if any(fac.pad):
        x = F.pad(x, (le, ri, t, bo), mode="replicate")
    if fac.dense is not None:
        w = fac.dense
        if w.shape[-1] == 1 and w.shape[-2] == 1:
            return x * w.reshape(1, -1, 1, 1)
        return F.conv2d(x, w)
    y = F.conv2d(x, fac.vert)
    return F.conv2d(y, fac.horz)


class RenderModule(nn.Module):
    """The exportable re-render (see the module docstring): ``(1, L, H, W)`` -> left, right,
    allinfocus, each ``(1, 1, H, W)``.

    Args:
        weights: (L, H, W) compositing weights.
        kernels: (2, L, K, K) uniform kernels, or (Pr, Pc, 2, L, K, K) patch kernels.
        kernel_tol: see :class:`ExportConfig`.
    """

    def __init__(self, weights: Tensor, kernels: Tensor, kernel_tol: float = 2e-4) -> None:
        super().__init__()
        layers, h, w = weights.shape
        self.layers, self.h, self.w = layers, h, w
        self.register_buffer("weights", weights.detach().float().reshape(1, layers, h, w).clone())
        self.patchwise = kernels.dim() == 6
        self.macs = 0
        if not self.patchwise:
            self.factors = [factor_kernels(kernels[:, i], kernel_tol) for i in range(layers)]
            self.macs = sum(f.macs for f in self.factors)
            self.regions = None
        else:
            from ..physics.blur import support_spans, tent_weights

            pr, pc = kernels.shape[:2]
            a, b = tent_weights(h, pr), tent_weights(w, pc)
            self.regions = []  # (row slice, col slice, blend (1,1,h,w), factors per layer)
            rs, cs = support_spans(a), support_spans(b)
            for r in range(pr):
                for c in range(pc):
                    r0, r1 = rs[r]
                    c0, c1 = cs[c]
                    blend = (a[r, r0:r1, None] * b[c, None, c0:c1]).float()[None, None]
                    facs = [factor_kernels(kernels[r, c, :, i], kernel_tol) for i in range(layers)]
                    self.macs += sum(f.macs for f in facs) * (r1 - r0) * (c1 - c0) // (h * w)
                    self.regions.append(((r0, r1), (c0, c1), blend, facs))

    def _blur_layer_region(self, xi: Tensor, r0: int, r1: int, c0: int, c1: int, fac: _Factor) -> Tensor:
        """Blurred views of layer ``xi`` (1,1,H,W) on rows r0:r1, cols c0:c1 (replicate borders of
        the whole image): slice the needed halo inside the image, pad the rest by replication."""
        t, bo, le, ri = fac.pad
        h, w = self.h, self.w
        ra, rb = max(r0 - t, 0), min(r1 + bo, h)
        ca, cb = max(c0 - le, 0), min(c1 + ri, w)
        src = xi[:, :, ra:rb, ca:cb]
        sub = _Factor(
            (t - (r0 - ra), bo - (rb - r1), le - (c0 - ca), ri - (cb - c1)), fac.dense, fac.vert, fac.horz, fac.macs
        )
        return _apply(src, sub)

    def forward(self, latent: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, w = self.h, self.w
        acc = None
        for i in range(self.layers):
            xi = latent[:, i : i + 1]
            di = self.weights[:, i : i + 1]
            if self.regions is None:
                y = _apply(xi, self.factors[i]) * di
            else:
                y = None
                for (r0, r1), (c0, c1), blend, facs in self.regions:
                    part = self._blur_layer_region(xi, r0, r1, c0, c1, facs[i]) * (blend * di[:, :, r0:r1, c0:c1])
                    part = F.pad(part, (c0, w - c1, r0, h - r1))
                    y = part if y is None else y + part
            acc = y if acc is None else acc + y
        aif = (latent * self.weights).sum(dim=1, keepdim=True)
        return acc[:, 0:1], acc[:, 1:2], aif


def _bank_kernels(kernels: Tensor, radii: Tensor, levels: int) -> Tensor:
    """Full-aperture refocus bank ``(levels + 1, 2 levels + 1, 2 levels + 1)``: ``(left + right) / 2``
    of the largest-|radius| layer (the patch grid's mean for patch kernels), resized to radius j."""
    from ..physics.kernels import resize_kernel

    if kernels.dim() == 6:
        kernels = kernels.mean(dim=(0, 1))
    big = int(radii.abs().argmax())
    rbig = float(radii.abs()[big])
    full = 0.5 * (kernels[0, big] + kernels[1, big]).double()
    size = 2 * levels + 1
    out = []
    for j in range(levels + 1):
        scale = j / rbig if rbig > 0 else 0.0
        out.append(resize_kernel(full, scale, size))
    return torch.stack(out).float()


class RefocusModule(nn.Module):
    """The exportable refocus: ``image (1,1,H,W), focus (), aperture ()`` -> ``(1,1,H,W)``.

    Args:
        defocus: (H, W) signed blur radius per pixel.
        bank: (R + 1, 2R + 1, 2R + 1) full-aperture kernels, level j has radius j.
        kernel_tol: see :class:`ExportConfig`.
    """

    def __init__(self, defocus: Tensor, bank: Tensor, kernel_tol: float = 2e-4) -> None:
        super().__init__()
        self.levels = bank.shape[0] - 1
        self.register_buffer("defocus", defocus.detach().float().reshape(1, 1, *defocus.shape).clone())
        self.register_buffer("steps", torch.arange(self.levels + 1, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.factors = [factor_kernels(bank[j : j + 1], kernel_tol) for j in range(self.levels + 1)]

    def forward(self, image: Tensor, focus: Tensor, aperture: Tensor) -> Tensor:
        rho = (aperture * (self.defocus - focus)).abs().clamp(0.0, float(self.levels))
        wts = torch.relu(1.0 - (rho - self.steps).abs())  # (1, R+1, H, W) hat weights
        out = None
        for j, fac in enumerate(self.factors):
            y = (image if j == 0 else _apply(image, fac)) * wts[:, j : j + 1]
            out = y if out is None else out + y
        return out


# ---------------------------------------------------------------------------------------------
# PyTorch references (independent of the factorization)


def render_reference(bundle: Any, latent: Tensor) -> dict[str, Tensor]:
    """PyTorch render of ``latent`` (1, L, H, W) with the bundle's weights and kernels."""
    from ..physics.blur import composite, render_dual_pixel, render_dual_pixel_patchwise

    wts = bundle.weights[None].float()
    with torch.no_grad():
        if bundle.patch_kernels is not None:
            views = render_dual_pixel_patchwise(latent, wts, bundle.patch_kernels)
        else:
            views = render_dual_pixel(latent, wts, bundle.kernels)
        aif = composite(latent, wts)
    return {"left": views[:, 0:1], "right": views[:, 1:2], "allinfocus": aif[:, None]}


def refocus_reference(defocus: Tensor, bank: Tensor, image: Tensor, focus: float, aperture: float) -> Tensor:
    """Dense PyTorch refocus, ``(1, 1, H, W)``: every full bank kernel as one true convolution of
    the replicate-padded image, in float64 by FFT (a dense 35x35 ``conv2d`` in float64 unfolds
    the image 1225 times: 13 GB at 1008x1344), blended with the hat weights of ``|rho|``."""
    levels = bank.shape[0] - 1
    rho = (aperture * (defocus.double() - focus)).abs().clamp(0, levels)
    x = image.double()
    xp = F.pad(x, (levels,) * 4, mode="replicate")
    hp, wp = xp.shape[-2:]
    h, w = x.shape[-2:]
    spectrum = torch.fft.rfft2(xp)
    out = torch.zeros_like(x)
    for j in range(levels + 1):
        wj = torch.relu(1 - (rho - j).abs())
        # kernel at [0, 2L]^2: y[n] = sum_m k[m] xp[n - m], so out(p) = y[p + 2L] (no wrap-around)
        y = torch.fft.irfft2(spectrum * torch.fft.rfft2(bank[j].double(), s=(hp, wp)), s=(hp, wp))
        out += wj * y[..., 2 * levels : 2 * levels + h, 2 * levels : 2 * levels + w]
    return out.float()


# ---------------------------------------------------------------------------------------------
# ONNX helpers


def export_torch(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], opset: int) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (keeps the requested opset, no DFT) and
    constant folding; every shape here is static, so tracer warnings are silenced."""
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, args, str(path), input_names=inputs, output_names=outputs, opset_version=opset,
                do_constant_folding=True, dynamo=False,
            )
        except OSError as err:
            raise OutputError(f"{path}: cannot write: {err.strerror or err}") from None


def _finalize(path: Path, props: dict[str, Any], opset: int) -> dict[str, Any]:
    """:func:`edgedp.deploy.onnx_finalize.finalize_graph` and the forbidden-op check; returns what the
    graph's sidecar entry adds (its external data file, when it has one)."""
    info = finalize_graph(path, props, opset)
    bad = onnx_tools.op_types(path) & FORBIDDEN_OPS
    if bad:
        raise OutputError(f"{path}: exported graph contains forbidden ops {sorted(bad)}")
    return {schema.EXTERNAL_DATA_KEY: info["external_data"]} if info["external_data"] else {}


# ---------------------------------------------------------------------------------------------
# export and verification


def _kernel_model(bundle: Any) -> str:
    cfg = bundle.meta.get("config", {}) or {}
    model = cfg.get("kernel_model")  # the FitConfig field: the only key a bundle's config has
    if not isinstance(model, str):
        model = "unknown"
    return f"{model}+patches" if bundle.patch_kernels is not None else model


def _levels(bundle: Any, config: ExportConfig) -> int:
    if config.refocus_levels is not None:
        return int(config.refocus_levels)
    return max(int(math.ceil(float(bundle.radii.abs().max()) - 1e-6)), 0)


def scene_files(gd: bool = True) -> list[str]:
    """Every file a scene export may write (before engines; the graphs' external data files
    exist only past :data:`edgedp_runtime.schema.EXTERNAL_DATA_THRESHOLD`)."""
    graphs = schema.SOURCE_GRAPHS["scene"] if gd else ("render", "refocus")
    files = [schema.GRAPHS[g].file for g in graphs]
    return files + [schema.external_data_file(f) for f in files] + list(schema.SOURCE_FILES["scene"]) + [schema.SIDECAR_NAME]


def export_scene(
    bundle: Any,
    out: Path | str,
    config: ExportConfig = ExportConfig(),
    *,
    overwrite: bool = False,
    gd: bool = True,
    dynamic: bool = True,
    verify: bool = True,
) -> dict[str, Any]:
    """Write ``render.onnx``, ``refocus.onnx`` and ``gd.onnx``, their test inputs and
    ``export.json`` into ``out``; returns the sidecar dict.  (``edgedp export`` goes through
    :func:`edgedp.deploy.exporter.run_export`, which writes into a staging folder first.)

    Raises:
        OutputError: ``out`` holds an export and ``overwrite`` is False; onnx missing; the
            exporter wrote another opset, a forbidden op or a graph TensorRT 8.5 would reject.
    """
    out = Path(out)
    sidecar_path = out / schema.SIDECAR_NAME
    existing = [out / name for name in scene_files(gd) if (out / name).exists()]
    if existing and not overwrite:
        raise OutputError(f"{existing[0]} exists (use --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder")
    onnx_tools.require_onnx()
    out.mkdir(parents=True, exist_ok=True)
    _, layers, h, w = bundle.latent.shape
    k = int(bundle.kernels.shape[-1])
    opset = int(config.opset)
    scene_id = str(bundle.meta.get("bundle_id", ""))
    kernels = bundle.patch_kernels if bundle.patch_kernels is not None else bundle.kernels
    kmodel = _kernel_model(bundle)
    levels = _levels(bundle, config)
    common = {
        "edgedp_version": __version__,
        "scene_id": scene_id,
        "opset": str(opset),
        "height": str(h),
        "width": str(w),
        "layers": str(layers),
        "kernel_size": str(k),
        "kernel_model": kmodel,
        "input_normalization": INPUT_NORMALIZATION,
    }

    render = RenderModule(bundle.weights, kernels, config.kernel_tol)
    latent = bundle.latent[0:1].float().contiguous()
    export_torch(render, (latent,), out / RENDER.file, RENDER.input_names, RENDER.output_names, opset)
    render_io = {
        "inputs": {"latent": [1, layers, h, w]},
        "outputs": {"left": [1, 1, h, w], "right": [1, 1, h, w], "allinfocus": [1, 1, h, w]},
    }
    render_data = _finalize(out / RENDER.file, {**common, "graph": "render", **render_io}, opset)
    np.save(out / RENDER.test_input, latent.numpy())

    bank = _bank_kernels(bundle.kernels if bundle.patch_kernels is None else bundle.patch_kernels, bundle.radii, levels)
    refocus = RefocusModule(bundle.defocus, bank, config.kernel_tol)
    image = bundle.allinfocus[0:1][None].float().contiguous()
    export_torch(
        refocus, (image, torch.tensor(0.0), torch.tensor(1.0)), out / REFOCUS.file, REFOCUS.input_names,
        REFOCUS.output_names, opset,
    )
    refocus_io = {
        "inputs": {"image": [1, 1, h, w], "focus": [], "aperture": []},
        "outputs": {"refocused": [1, 1, h, w]},
    }
    refocus_data = _finalize(out / REFOCUS.file, {**common, "graph": "refocus", "refocus_levels": str(levels), **refocus_io}, opset)
    np.save(out / REFOCUS.test_input, image.numpy())
    np.save(out / schema.REFOCUS_BANK, bank.numpy())

    graphs: dict[str, Any] = {
        "render": {**render_io, "test_input": RENDER.test_input, "macs_per_pixel": int(render.macs), **render_data},
        "refocus": {
            **refocus_io,
            "test_input": REFOCUS.test_input,
            "levels": levels,
            "bank": schema.REFOCUS_BANK,
            "defaults": {"focus": 0.0, "aperture": 1.0},
            **refocus_data,
        },
    }
    if gd:
        from .onnx_gd import export_gd_onnx  # noqa: PLC0415

        info = export_gd_onnx(bundle, out / GD.file, opset=opset, dynamic=dynamic)
        graphs["gd"] = json_ready(info)
    sidecar = schema.new_sidecar(
        source="scene", edgedp_version=__version__, scene_id=scene_id, opset=opset, height=h, width=w, layers=layers,
        kernel_size=k, radii=[float(r) for r in bundle.radii.tolist()], kernel_model=kmodel,
        input_normalization=INPUT_NORMALIZATION, graphs=graphs, bundle=str(Path(bundle.folder).resolve()),
    )
    write_json(sidecar_path, sidecar, overwrite=True)
    if verify:
        sidecar["verification"] = verify_export(out, bundle, atol=config.atol, rtol=config.rtol)
        write_json(sidecar_path, sidecar, overwrite=True)
    return sidecar


def read_sidecar(out: Path | str) -> dict[str, Any]:
    """Read ``OUT/export.json`` with the runtime's reader (:func:`edgedp_runtime.schema.load_export`),
    its one-line errors as InputError."""
    try:
        return schema.load_export(out).data
    except RunnerError as err:
        raise InputError(str(err)) from None


def verify_export(
    out: Path | str, bundle: Any, *, atol: float = 1e-4, rtol: float = 1e-3, threads: int | None = None,
    fp16: bool = False,
) -> dict[str, Any]:
    """Run every graph in ``out`` with ONNX Runtime (CPU) and compare with PyTorch.

    Returns ``{graph: {"max_abs", "max_rel", "atol", "rtol", "passed", "outputs"}}`` (render:
    worst over its three outputs; refocus: worst over (focus, aperture) = (0, 1), (max r / 2,
    1.5), (0, 0); gd: :func:`edgedp.deploy.onnx_gd.verify_gd_onnx` with ``atol``).  ``fp16``: the FP16
    emulation of each graph against the same references (module docstring)."""
    out = Path(out)
    side = read_sidecar(out)
    if side.get("scene_id") != str(bundle.meta.get("bundle_id", "")):
        raise InputError(f"{out / schema.SIDECAR_NAME} belongs to scene {side.get('scene_id')}, not to bundle {bundle.folder}")
    result: dict[str, Any] = {}
    graphs = side["graphs"]

    g = graphs["render"]
    sess = onnx_tools.ort_session(out / g["file"], threads=threads, fp16=fp16)
    latent = np.load(out / g["test_input"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"latent": latent})))
    ref = render_reference(bundle, torch.from_numpy(latent))
    result["render"] = onnx_tools.graph_verification(
        {n: onnx_tools.output_errors(got[n], ref[n].numpy(), atol, rtol) for n in RENDER.output_names}
    )

    g = graphs["refocus"]
    sess = onnx_tools.ort_session(out / g["file"], threads=threads, fp16=fp16)
    image = np.load(out / g["test_input"])
    bank = torch.from_numpy(np.load(out / g["bank"]))
    out_name = sess.get_outputs()[0].name
    cases = {}
    rmax = float(bundle.radii.abs().max())
    for focus, aperture in ((0.0, 1.0), (0.5 * rmax, 1.5), (0.0, 0.0)):
        feeds = {"image": image, "focus": np.array(focus, np.float32), "aperture": np.array(aperture, np.float32)}
        (y,) = sess.run([out_name], feeds)
        r = refocus_reference(bundle.defocus[None, None], bank, torch.from_numpy(image), focus, aperture)
        cases[f"{out_name}(focus={focus:g}, aperture={aperture:g})"] = onnx_tools.output_errors(y, r.numpy(), atol, rtol)
    result["refocus"] = onnx_tools.graph_verification(cases)

    if "gd" in graphs:
        from .onnx_gd import verify_gd_onnx  # noqa: PLC0415

        # FP32: gd by its absolute error (its outputs are alphas in [0, 1] and radii in px); FP16: + rtol
        gd_rtol = rtol if fp16 else None
        result["gd"] = json_ready(
            verify_gd_onnx(bundle, out / graphs["gd"]["file"], atol=atol, rtol=gd_rtol, fp16=fp16, threads=threads)
        )
    return result
