"""Export a fitted scene bundle to ONNX: ``render.onnx`` and ``refocus.onnx`` plus ``export.json``.

``render.onnx``
    input ``latent`` (1, L, H, W) float32; outputs ``left``, ``right``, ``allinfocus``
    (1, 1, H, W).  ``view_v = sum_i d_i (x_i conv f_i^v)`` with the compositing weights ``d``
    and the kernels (uniform, or the stage-3 patch kernels blended with the tents of
    :func:`edgedp.physics.patch_blend_weights`) baked in as constants; ``allinfocus =
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
    :func:`edgedp.kernels.resize_kernel`), ``w_j`` hat (linear) interpolation weights over
    ``|rho|`` clamped to ``[0, R]``.  ``aperture = 0`` returns the image exactly (level 0 is a
    delta).

Sidecar ``export.json`` (format_version 1; the ``export/`` runners read it)::

    {"format": "edgedp-export", "format_version": 1, "edgedp_version": str, "scene_id": str
     (the bundle_id), "bundle": str (absolute path of the scene bundle folder), "created": ISO 8601
     UTC, "opset": int, "height": int, "width": int, "layers": int, "kernel_size": int,
     "radii": [float] * layers, "kernel_model": str ("butterworth", "disk", "+patches" appended
     when stage-3 kernels are baked in), "input_normalization": str,
     "graphs": {
       "render":  {"file": "render.onnx", "inputs": {"latent": [1, L, H, W]},
                   "outputs": {"left": [1, 1, H, W], "right": [1, 1, H, W], "allinfocus": [1, 1, H, W]},
                   "test_input": "render_latent.npy", "macs_per_pixel": int},
       "refocus": {"file": "refocus.onnx", "inputs": {"image": [1, 1, H, W], "focus": [], "aperture": []},
                   "outputs": {"refocused": [1, 1, H, W]}, "test_input": "allinfocus.npy",
                   "levels": R, "bank": "refocus_bank.npy", "defaults": {"focus": 0.0, "aperture": 1.0}},
       "gd": {"file": "gd.onnx", ...export_gd_onnx's dict...}          (when edgedp.onnx_gd exists)
     },
     "verification": {graph: {"max_abs", "max_rel", "atol", "rtol", "passed"}}  ({} with --no-verify;
                      gd's entry is verify_gd_onnx's dict),
     "notes": [str] (optional), "engine": {"half", "workspace_mib"} (only --format engine, which also
     adds "engine": "<name>.engine" to each graph)}

All float inputs are float32; scalars ``focus`` / ``aperture`` are 0-d tensors.

Error measures (both graphs): ``max_abs = max |onnx - torch|``, ``max_rel = max_abs /
max |torch|``; a graph passes when ``max_abs <= atol + rtol * max |torch|``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import __version__
from .errors import InputError, OutputError
from .io import json_ready, write_json

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "SIDECAR_NAME",
    "ExportConfig",
    "RenderModule",
    "RefocusModule",
    "export_scene",
    "onnx_ops",
    "refocus_reference",
    "render_reference",
    "verify_export",
]

EXPORT_FORMAT = "edgedp-export"
EXPORT_FORMAT_VERSION = 1
SIDECAR_NAME = "export.json"
RENDER_FILE = "render.onnx"
REFOCUS_FILE = "refocus.onnx"
GD_FILE = "gd.onnx"
RENDER_TEST = "render_latent.npy"
REFOCUS_TEST = "allinfocus.npy"
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


def _factor(kernels: Tensor, tol: float) -> _Factor:
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
            self.factors = [_factor(kernels[:, i], kernel_tol) for i in range(layers)]
            self.macs = sum(f.macs for f in self.factors)
            self.regions = None
        else:
            from .physics import _tents, support_spans

            pr, pc = kernels.shape[:2]
            a, b = _tents(h, pr), _tents(w, pc)
            self.regions = []  # (row slice, col slice, blend (1,1,h,w), factors per layer)
            rs, cs = support_spans(a), support_spans(b)
            for r in range(pr):
                for c in range(pc):
                    r0, r1 = rs[r]
                    c0, c1 = cs[c]
                    blend = (a[r, r0:r1, None] * b[c, None, c0:c1]).float()[None, None]
                    facs = [_factor(kernels[r, c, :, i], kernel_tol) for i in range(layers)]
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
    from .kernels import resize_kernel

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
        self.factors = [_factor(bank[j : j + 1], kernel_tol) for j in range(self.levels + 1)]

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
    from .physics import composite, render_dual_pixel, render_dual_pixel_patchwise

    wts = bundle.weights[None].float()
    with torch.no_grad():
        if bundle.patch_kernels is not None:
            views = render_dual_pixel_patchwise(latent, wts, bundle.patch_kernels)
        else:
            views = render_dual_pixel(latent, wts, bundle.kernels)
        aif = composite(latent, wts)
    return {"left": views[:, 0:1], "right": views[:, 1:2], "allinfocus": aif[:, None]}


def refocus_reference(defocus: Tensor, bank: Tensor, image: Tensor, focus: float, aperture: float) -> Tensor:
    """Dense PyTorch refocus (full bank kernels as plain convolutions), ``(1, 1, H, W)``."""
    levels = bank.shape[0] - 1
    rho = (aperture * (defocus.double() - focus)).abs().clamp(0, levels)
    x = image.double()
    xp = F.pad(x, (levels,) * 4, mode="replicate")
    out = torch.zeros_like(x)
    for j in range(levels + 1):
        wj = torch.relu(1 - (rho - j).abs())
        out += wj * F.conv2d(xp, bank[j].double().flip(-1, -2)[None, None])
    return out.float()


# ---------------------------------------------------------------------------------------------
# ONNX helpers


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise OutputError("the onnx package is missing: pip install 'edgedp[export]' (CPU) or 'edgedp[gpu]'") from None
    return onnx


def _ort_session(path: Path, threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise OutputError(
            "onnxruntime is missing: pip install 'edgedp[export]' (CPU) or 'edgedp[gpu]' (onnxruntime-gpu; not both)"
        ) from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_ops(path: Path | str) -> set[str]:
    """The set of op types in an ONNX file (including nested graphs)."""
    onnx = _require_onnx()
    model = onnx.load(str(path))
    ops: set[str] = set()

    def walk(graph):
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.g is not None and len(attr.g.node):
                    walk(attr.g)

    walk(model.graph)
    return ops


def onnx_opset(path: Path | str) -> int:
    """The default-domain opset of an ONNX file."""
    onnx = _require_onnx()
    model = onnx.load(str(path))
    return max(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _torch_export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], opset: int) -> None:
    import warnings

    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # TracerWarnings about constant shapes are expected: every shape here is static.
        warnings.simplefilter("ignore")
        torch.onnx.export(  # TorchScript exporter: keeps the requested opset, no DFT
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _set_metadata(path: Path, props: dict[str, Any], opset: int) -> None:
    onnx = _require_onnx()
    model = onnx.load(str(path))
    got = max(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if got != opset:
        raise OutputError(f"{path}: the exporter wrote opset {got}, not the requested {opset}")
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    model.producer_name = "edgedp"
    model.producer_version = __version__
    onnx.save(model, str(path))
    bad = onnx_ops(path) & FORBIDDEN_OPS
    if bad:
        raise OutputError(f"{path}: exported graph contains forbidden ops {sorted(bad)}")


def _compare(got: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    max_abs = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    ok = bool(np.isfinite(got).all()) and max_abs <= atol + rtol * scale
    return {"max_abs": max_abs, "max_rel": max_rel, "atol": atol, "rtol": rtol, "passed": ok}


# ---------------------------------------------------------------------------------------------
# export and verification


def _kernel_model(bundle: Any) -> str:
    cfg = bundle.meta.get("config", {}) or {}
    for key in ("kernel_model", "kernel", "model"):
        if isinstance(cfg.get(key), str):
            model = cfg[key]
            break
    else:
        model = "unknown"
    return f"{model}+patches" if bundle.patch_kernels is not None else model


def _levels(bundle: Any, config: ExportConfig) -> int:
    if config.refocus_levels is not None:
        return int(config.refocus_levels)
    return max(int(math.ceil(float(bundle.radii.abs().max()) - 1e-6)), 0)


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
    """Write ``render.onnx``, ``refocus.onnx`` (and ``gd.onnx`` when :mod:`edgedp.onnx_gd` exists),
    their test inputs and ``export.json`` into ``out``; returns the sidecar dict.

    Raises:
        OutputError: ``out`` holds an export and ``overwrite`` is False; onnx missing; the
            exporter wrote another opset or a forbidden op.
    """
    out = Path(out)
    sidecar_path = out / SIDECAR_NAME
    existing = [p for p in (sidecar_path, out / RENDER_FILE, out / REFOCUS_FILE, out / GD_FILE) if p.exists()]
    if existing and not overwrite:
        raise OutputError(f"{existing[0]} exists (use --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder")
    _require_onnx()
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
    _torch_export(render, (latent,), out / RENDER_FILE, ["latent"], ["left", "right", "allinfocus"], opset)
    render_io = {
        "inputs": {"latent": [1, layers, h, w]},
        "outputs": {"left": [1, 1, h, w], "right": [1, 1, h, w], "allinfocus": [1, 1, h, w]},
    }
    _set_metadata(out / RENDER_FILE, {**common, "graph": "render", **{n: json.dumps(v) for n, v in render_io.items()}}, opset)
    np.save(out / RENDER_TEST, latent.numpy())

    bank = _bank_kernels(bundle.kernels if bundle.patch_kernels is None else bundle.patch_kernels, bundle.radii, levels)
    refocus = RefocusModule(bundle.defocus, bank, config.kernel_tol)
    image = bundle.allinfocus[0:1][None].float().contiguous()
    _torch_export(
        refocus, (image, torch.tensor(0.0), torch.tensor(1.0)), out / REFOCUS_FILE, ["image", "focus", "aperture"], ["refocused"], opset
    )
    refocus_io = {
        "inputs": {"image": [1, 1, h, w], "focus": [], "aperture": []},
        "outputs": {"refocused": [1, 1, h, w]},
    }
    _set_metadata(
        out / REFOCUS_FILE,
        {**common, "graph": "refocus", "refocus_levels": str(levels), **{n: json.dumps(v) for n, v in refocus_io.items()}},
        opset,
    )
    np.save(out / REFOCUS_TEST, image.numpy())
    np.save(out / "refocus_bank.npy", bank.numpy())

    graphs: dict[str, Any] = {
        "render": {"file": RENDER_FILE, **render_io, "test_input": RENDER_TEST, "macs_per_pixel": int(render.macs)},
        "refocus": {
            "file": REFOCUS_FILE,
            **refocus_io,
            "test_input": REFOCUS_TEST,
            "levels": levels,
            "bank": "refocus_bank.npy",
            "defaults": {"focus": 0.0, "aperture": 1.0},
        },
    }
    gd_note = None
    if gd:
        try:
            from . import onnx_gd  # type: ignore[attr-defined]
        except ImportError:
            onnx_gd = None
            gd_note = "edgedp.onnx_gd is not available: gd.onnx not exported"
        if onnx_gd is not None:
            info = onnx_gd.export_gd_onnx(bundle, out / GD_FILE, opset=opset, dynamic=dynamic)
            graphs["gd"] = {"file": GD_FILE, **json_ready(info)}
    sidecar: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "edgedp_version": __version__,
        "scene_id": scene_id,
        "bundle": str(Path(bundle.folder).resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "opset": opset,
        "height": h,
        "width": w,
        "layers": layers,
        "kernel_size": k,
        "radii": [float(r) for r in bundle.radii.tolist()],
        "kernel_model": kmodel,
        "input_normalization": INPUT_NORMALIZATION,
        "graphs": graphs,
        "verification": {},
    }
    if gd_note:
        sidecar["notes"] = [gd_note]
    write_json(sidecar_path, sidecar, overwrite=True)
    if verify:
        sidecar["verification"] = verify_export(out, bundle, atol=config.atol, rtol=config.rtol)
        write_json(sidecar_path, sidecar, overwrite=True)
    return sidecar


def read_sidecar(out: Path | str) -> dict[str, Any]:
    """Read ``OUT/export.json`` (InputError naming the file when missing or not an export)."""
    path = Path(out) / SIDECAR_NAME if Path(out).is_dir() or not str(out).endswith(".json") else Path(out)
    if not Path(out).exists():
        raise InputError(f"export folder {out} does not exist")
    if not path.is_file():
        raise InputError(f"{path} does not exist (not an edgedp export folder?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path} is not valid JSON: {err}") from None
    if data.get("format") != EXPORT_FORMAT:
        raise InputError(f"{path} is not an {EXPORT_FORMAT} sidecar")
    if data.get("format_version") != EXPORT_FORMAT_VERSION:
        raise InputError(f"{path} has format_version {data.get('format_version')}, this edgedp reads {EXPORT_FORMAT_VERSION}")
    return data


def verify_export(out: Path | str, bundle: Any, *, atol: float = 1e-4, rtol: float = 1e-3, threads: int | None = None) -> dict[str, Any]:
    """Run every graph in ``out`` with ONNX Runtime (CPU) and compare with PyTorch.

    Returns ``{graph: {"max_abs", "max_rel", "atol", "rtol", "passed"}}`` (render: worst over its
    three outputs; refocus: worst over (focus, aperture) = (0, 1), (max r / 2, 1.5), (0, 0))."""
    out = Path(out)
    side = read_sidecar(out)
    if side.get("scene_id") != str(bundle.meta.get("bundle_id", "")):
        raise InputError(f"{out / SIDECAR_NAME} belongs to scene {side.get('scene_id')}, not to bundle {bundle.folder}")
    result: dict[str, Any] = {}
    graphs = side["graphs"]

    def worst(items: list[dict[str, Any]]) -> dict[str, Any]:
        w = max(items, key=lambda r: r["max_rel"])
        return {**w, "passed": all(r["passed"] for r in items)}

    g = graphs["render"]
    sess = _ort_session(out / g["file"], threads)
    latent = np.load(out / g["test_input"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"latent": latent})))
    ref = render_reference(bundle, torch.from_numpy(latent))
    result["render"] = worst([_compare(got[n], ref[n].numpy(), atol, rtol) for n in ("left", "right", "allinfocus")])

    g = graphs["refocus"]
    sess = _ort_session(out / g["file"], threads)
    image = np.load(out / g["test_input"])
    bank = torch.from_numpy(np.load(out / g["bank"]))
    out_name = sess.get_outputs()[0].name
    items = []
    rmax = float(bundle.radii.abs().max())
    for focus, aperture in ((0.0, 1.0), (0.5 * rmax, 1.5), (0.0, 0.0)):
        feeds = {"image": image, "focus": np.array(focus, np.float32), "aperture": np.array(aperture, np.float32)}
        (y,) = sess.run([out_name], feeds)
        r = refocus_reference(bundle.defocus[None, None], bank, torch.from_numpy(image), focus, aperture)
        items.append(_compare(y, r.numpy(), atol, rtol))
    result["refocus"] = worst(items)

    if "gd" in graphs:
        try:
            from . import onnx_gd  # type: ignore[attr-defined]
        except ImportError:
            onnx_gd = None
        if onnx_gd is not None:
            info = onnx_gd.verify_gd_onnx(bundle, out / graphs["gd"]["file"])
            result["gd"] = json_ready(info)
    return result
