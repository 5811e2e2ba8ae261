"""Export G_D (the defocus CNN) of a fitted scene bundle to ONNX: ``gd.onnx``.

The graph (built from :mod:`edgedp.models.defocus_net` and the compositing rule of
:func:`edgedp.physics.blur.over_weights`, without ``cumprod``, which neither exports cleanly nor exists in
TensorRT 8.5):

    pair (1, 2, H, W) float32        DP pair [left, right] at FULL resolution, linear, the fit's
                                     normalized scale (~[0, 1]); H, W multiples of ``8 * input_scale``
    -> AvgPool(input_scale)          area down-scaling, as :func:`edgedp.models.defocus_net.gd_input`
    -> standardize                   (x - mean) / max(std, 1e-6), mean / unbiased std over the pair
                                     (FP16-safe: no count above 1344; ONNX nodes "/standardize/...")
    -> G_D                           alpha logits (1, L, H / (8 s), W / (8 s))
    -> Resize (bilinear, half-pixel) logits up-sampled to (H, W), as :func:`upsample_logits`
    -> sigmoid, alpha_0 = 1          :func:`alphas_from_logits` (a constant mask, no Concat)
    -> over weights, unrolled        d_i = a_i * prod_{j > i} (1 - a_j), one Mul per layer
    outputs: alphas  (1, L, H, W)    MPI alphas, layer L - 1 on top, alphas[:, 0] = 1
             defocus (1, 1, H, W)    signed blur radius (px) sum_i d_i r_i (CONVENTIONS sign)

Up-sampling happens on the logits, before the sigmoid, exactly as the fit does it (edgedp.fit.pipeline), so the
exported alphas are the fit's alphas, not an interpolation of them.

Input size rule: ``H`` and ``W`` must be multiples of ``multiple_of = 8 * input_scale`` (the
graph does not pad; :func:`edgedp.models.defocus_net.gd_input` replicate-pads, so a runner pads the pair by
edge replication to the next multiple and crops the outputs).  The sidecar entry returned by
:func:`export_gd_onnx` states it (``multiple_of``) and runners validate it.

FP16: the unbiased variance needs ``n / (n - 1)`` with ``n = 2 H W / s^2`` values (677,376 at
1008x1344, beyond FP16's 65,504: an FP16 engine turned every output into NaN).  :class:`Standardize`
computes it as ``1 / (1 - (1/C)(1/H')(1/W'))`` from per-axis reciprocals, which stay in FP16's
range, and an FP16 engine build keeps its layers in FP32 as well (the sidecar's ``fp32_nodes``:
:func:`edgedp.deploy.tensorrt.pin_fp32`, ``--layerPrecisions`` in ``build_engines.sh``).

Only the CPU ONNX Runtime is used here (verification); ``onnx`` / ``onnxruntime`` are imported
lazily with a clear message (extra ``edgedp[export]``).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedp_runtime.schema import EXTERNAL_DATA_KEY, FP32_NODES_KEY, GRAPHS

from .. import __version__
from . import onnx_tools
from .onnx_finalize import finalize_graph
from ..errors import EdgedpError, InputError, OutputError
from ..models.defocus_net import alphas_from_logits, build_gd, gd_input, upsample_logits
from ..physics.blur import over_weights

__all__ = [
    "GD_INPUT_NORMALIZATION",
    "GDExportModule",
    "Standardize",
    "export_gd_onnx",
    "gd_reference",
    "gd_multiple_of",
    "verify_gd_onnx",
]

#: What ``pair`` must hold (also written into the metadata and the sidecar).
GD_INPUT_NORMALIZATION = (
    "pair (1, 2, H, W) float32 = [left, right] DP views at full resolution, linear, normalized like the "
    "fit's input (black level removed, divided by white - black: ~[0, 1]); H, W multiples of multiple_of; "
    "the graph itself down-scales by input_scale and standardizes by the pair's mean and std"
)
#: ONNX node-name scope of the standardization (torch.onnx names nodes after the submodule).
STANDARDIZE_SCOPE = "/standardize/"


def gd_multiple_of(bundle) -> int:
    """``8 * input_scale``: what H and W of ``pair`` must be multiples of."""
    return 8 * _input_scale(bundle)


def _input_scale(bundle) -> int:
    scale = int(bundle.gd_config.get("input_scale", 1))
    if scale < 1:
        raise InputError(f"{bundle.folder}: G_D input_scale {scale} must be >= 1")
    return scale


def _build_net(bundle) -> nn.Module:
    cfg = bundle.gd_config
    if "layers" not in cfg:
        raise InputError(f"{bundle.folder}: scene.json has no G_D config (gd.config.layers)")
    net = build_gd(cfg)
    try:
        net.load_state_dict({k: v.float() for k, v in bundle.gd_state.items()})
    except RuntimeError as err:
        raise InputError(f"{bundle.folder}: G_D weights do not fit its config: {str(err).splitlines()[0]}") from err
    return net.eval()


class Standardize(nn.Module):
    """``(x - mean) / max(std, 1e-6)`` over all of ``x`` (1, C, H, W), ``std`` unbiased (torch.std's
    default, as :func:`edgedp.models.defocus_net.gd_input`), in a form that stays within FP16's range.

    Mean and mean square are nested means, one axis at a time: equal to the global ones (every
    group has the same size), but each ReduceMean adds up at most max(H, W) values, so float32
    accumulation in the runtime (ONNX Runtime, TensorRT sum sequentially) stays as accurate as
    torch's cascade summation; one ReduceMean over all 2 H W / s^2 values lost ~1e-4 px of
    defocus at 1008x1344.  The Bessel factor ``n / (n - 1)`` is ``1 / (1 - (1/C)(1/H)(1/W))``:
    reciprocals of single dimensions instead of the count n itself (677,376 at 1008x1344, which
    overflows FP16)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("one", torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True).mean(dim=1, keepdim=True)
        xc = x - mean
        msq = (xc * xc).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True).mean(dim=1, keepdim=True)
        inv_n = (self.one / x.shape[1]) * (self.one / x.shape[2]) * (self.one / x.shape[3])
        var = msq / (self.one - inv_n)
        return xc / var.sqrt().clamp_min(1e-6)


class GDExportModule(nn.Module):
    """The exported computation (see the module docstring), TensorRT-friendly: no cumprod, no
    Concat of a dynamically shaped ones tensor, constant Resize scales, an FP16-safe
    standardization (:class:`Standardize`).

    ``pair``: (1, 2, H, W), H and W multiples of ``8 * scale``.  Returns ``(alphas, defocus)``.
    """

    def __init__(self, net: nn.Module, scale: int, radii: Tensor) -> None:
        super().__init__()
        self.net = net
        self.scale = int(scale)
        self.standardize = Standardize()
        layers = int(radii.numel())
        self.layers = layers
        # alpha = sigmoid * mask + (1 - mask): mask[0] = 0 makes alpha_0 exactly 1.
        mask = torch.ones(1, layers, 1, 1)
        mask[:, 0] = 0
        self.register_buffer("mask", mask)
        self.register_buffer("one_minus_mask", 1 - mask)
        self.register_buffer("radii", radii.float().reshape(1, layers, 1, 1))

    def forward(self, pair: Tensor) -> tuple[Tensor, Tensor]:
        x = F.avg_pool2d(pair, self.scale) if self.scale > 1 else pair
        x = self.standardize(x)
        logits = self.net(x)
        f = 8 * self.scale
        up = F.interpolate(logits, scale_factor=(float(f), float(f)), mode="bilinear", align_corners=False)
        alphas = torch.sigmoid(up) * self.mask + self.one_minus_mask
        # over weights, unrolled from the top layer down: d_i = a_i * prod_{j > i} (1 - a_j)
        above = None
        weights: list[Tensor] = [None] * self.layers  # type: ignore[list-item]
        for i in range(self.layers - 1, -1, -1):
            a = alphas[:, i : i + 1]
            weights[i] = a if above is None else a * above
            if i > 0:
                above = (1 - a) if above is None else above * (1 - a)
        defocus = weights[0] * self.radii[:, 0:1]
        for i in range(1, self.layers):
            defocus = defocus + weights[i] * self.radii[:, i : i + 1]
        return alphas, defocus


def gd_reference(bundle, pair: Tensor, net: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """The same computation with the library's own functions (what the fit does): ``gd_input``,
    G_D, ``upsample_logits``, ``alphas_from_logits``, ``over_weights`` (cumprod).  ``pair``:
    (1, 2, H, W) float32.  Returns ``(alphas (1, L, H, W), defocus (1, 1, H, W))``."""
    net = _build_net(bundle) if net is None else net
    scale = _input_scale(bundle)
    h, w = pair.shape[-2:]
    with torch.no_grad():
        logits = net(gd_input(pair, scale))
        alphas = alphas_from_logits(upsample_logits(logits, (h, w), scale))
        weights = over_weights(alphas)
        radii = bundle.radii.float().reshape(1, -1, 1, 1)
        defocus = (weights * radii).sum(dim=1, keepdim=True)
    return alphas, defocus


def _static_size(bundle, m: int) -> tuple[int, int]:
    h, w = (int(s) for s in bundle.defocus.shape[-2:])
    return math.ceil(h / m) * m, math.ceil(w / m) * m


def export_gd_onnx(bundle, path, *, opset: int = 17, dynamic: bool = True) -> dict:
    """Write ``gd.onnx`` for the bundle's G_D to ``path``; return its sidecar entry.

    ``dynamic``: H and W are symbolic (``"H"``, ``"W"``; multiples of ``multiple_of``); otherwise
    fixed at the bundle's size rounded up to ``multiple_of``.  The graph goes through
    :func:`edgedp.deploy.onnx_finalize.finalize_graph` (constant folding, TensorRT 8.5 checks, metadata).
    The entry's ``fp32_nodes`` names the standardization's float nodes, which an FP16 engine
    keeps in FP32.  Raises :class:`OutputError` when the file cannot be written, the saved
    file's opset is not ``opset`` or TensorRT 8.5 would reject the graph.
    """
    onnx_tools.require_onnx()
    opset = int(opset)
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path.parent}: output folder does not exist")
    scale = _input_scale(bundle)
    m = 8 * scale
    net = _build_net(bundle)
    radii = bundle.radii.float()
    if int(net.layers) != int(radii.numel()):
        raise InputError(f"{bundle.folder}: G_D has {net.layers} output layers but the bundle {radii.numel()} radii")
    module = GDExportModule(net, scale, radii).eval()
    h, w = (2 * m, 3 * m) if dynamic else _static_size(bundle, m)
    example = torch.rand(1, 2, h, w, generator=torch.Generator().manual_seed(0))
    dyn = {"pair": {2: "H", 3: "W"}, "alphas": {2: "H", 3: "W"}, "defocus": {2: "H", 3: "W"}} if dynamic else None
    spec = GRAPHS["gd"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, (example,), str(path), input_names=spec.input_names, output_names=spec.output_names,
                dynamic_axes=dyn, opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        except OSError as err:
            raise OutputError(f"{path}: cannot write: {err.strerror or err}") from err
    L = int(radii.numel())
    hs, ws = ("H", "W") if dynamic else (h, w)
    entry: dict[str, Any] = {
        "file": path.name,
        "inputs": {"pair": [1, 2, hs, ws]},
        "outputs": {"alphas": [1, L, hs, ws], "defocus": [1, 1, hs, ws]},
        "dynamic": bool(dynamic),
        "multiple_of": m,
        "input_scale": scale,
        "input_normalization": GD_INPUT_NORMALIZATION,
        "layers": L,
        "radii": [float(r) for r in radii.tolist()],
        "opset": opset,
    }
    meta = {
        "edgedp_version": __version__,
        "graph": "gd",
        "scene_id": str(bundle.meta.get("bundle_id", "")),
        "layers": str(L),
        "radii": entry["radii"],
        "opset": str(opset),
        "input_normalization": GD_INPUT_NORMALIZATION,
        "input_scale": str(scale),
        "multiple_of": str(m),
        "dynamic": bool(dynamic),
        "inputs": entry["inputs"],
        "outputs": entry["outputs"],
        "outputs_meaning": (
            "alphas (1, L, H, W): MPI alphas, layer L-1 on top, alphas[:, 0] = 1; defocus (1, 1, H, W): signed "
            "blur radius in px, sum_i d_i r_i with d_i = a_i prod_{j>i} (1 - a_j); r > 0 behind the focal plane"
        ),
    }
    saved = finalize_graph(path, meta, opset)
    if saved["external_data"]:
        entry[EXTERNAL_DATA_KEY] = saved["external_data"]
    entry[FP32_NODES_KEY] = onnx_tools.float_nodes(path, STANDARDIZE_SCOPE)
    return entry


def _graph_dims(sess) -> list:
    return list(sess.get_inputs()[0].shape)


def _test_pair(bundle, h: int, w: int) -> Tensor:
    """A DP-like test pair of size (h, w) from the bundle's all-in-focus image: left = image,
    right = image shifted 2 px to the right, plus a little seeded noise; (1, 2, h, w)."""
    img = bundle.allinfocus.float().mean(dim=0)[None, None]
    img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    right = torch.cat([img[:, :1].expand(h, 2), img[:, :-2]], dim=1)
    g = torch.Generator().manual_seed(h * 10007 + w)
    noise = 0.01 * torch.randn(2, h, w, generator=g)
    return (torch.stack([img, right]) + noise).clamp(0, 1)[None].contiguous()


def verify_gd_onnx(
    bundle, path, *, sizes=None, atol: float = 1e-4, rtol: float | None = None, fp16: bool = False, threads: int | None = 2
) -> dict:
    """Run ``gd.onnx`` with ONNX Runtime (CPU) and compare with :func:`gd_reference` (PyTorch).

    ``sizes``: list of (H, W), multiples of ``8 * input_scale``; default two different sizes (the
    bundle's size rounded up to the multiple and a smaller one) for a dynamic graph, the graph's
    own size for a static one.  ``fp16``: run the graph's FP16 emulation
    (:func:`edgedp.deploy.onnx_tools.emulate_fp16`) instead, against the same FP32 reference.  Returns
    ``{"sizes", "max_abs", "max_rel", "per_size", "outputs", "atol", "passed"}`` with ``max_abs``
    = max |onnx - torch| over both outputs and sizes, ``max_rel`` = max over outputs of max_abs /
    max |torch| (relative to the output's range: alphas near 0 make an element-wise ratio
    meaningless), ``outputs`` the same per output; ``passed``: finite and ``max_abs <= atol``
    (with ``rtol``: each output's ``max_abs <= atol + rtol * max |torch|``, for the FP16 check).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    m = gd_multiple_of(bundle)
    sess = onnx_tools.ort_session(path, threads=threads, fp16=fp16)
    dims = _graph_dims(sess)
    static = all(isinstance(d, int) for d in dims[2:])
    if sizes is None:
        if static:
            sizes = [(int(dims[2]), int(dims[3]))]
        else:
            hb, wb = _static_size(bundle, m)
            small = (max(m, (hb // 2) // m * m), max(m, (wb // 3) // m * m))
            if small == (hb, wb):
                small = (hb + m, wb)
            sizes = [(hb, wb), small]
    sizes = [(int(h), int(w)) for h, w in sizes]
    for h, w in sizes:
        if h % m or w % m or h <= 0 or w <= 0:
            raise InputError(f"{path}: size {h}x{w} is not a positive multiple of {m} (8 * input_scale)")
        if static and (h, w) != (dims[2], dims[3]):
            raise InputError(f"{path}: static graph takes {dims[2]}x{dims[3]}, not {h}x{w}")
    net = _build_net(bundle)
    names = GRAPHS["gd"].output_names
    per_output = {name: {"max_abs": 0.0, "max_rel": 0.0} for name in names}
    finite, within, per_size = True, True, []
    for h, w in sizes:
        pair = _test_pair(bundle, h, w)
        ref = gd_reference(bundle, pair, net)
        out = sess.run(names, {"pair": pair.numpy()})
        entry = {"size": [h, w]}
        for name, r, o in zip(names, ref, out):
            r = r.numpy()
            if o.shape != r.shape:
                raise EdgedpError(f"{path}: {name} has shape {tuple(o.shape)}, PyTorch {tuple(r.shape)}")
            err = onnx_tools.output_errors(o, r, atol, rtol)
            finite &= bool(np.isfinite(o).all())
            within &= err["passed"]
            entry[name] = err["max_abs"]
            per_output[name]["max_abs"] = max(per_output[name]["max_abs"], err["max_abs"])
            per_output[name]["max_rel"] = max(per_output[name]["max_rel"], err["max_rel"])
        per_size.append(entry)
    max_abs = max(r["max_abs"] for r in per_output.values())
    passed = within if rtol is not None else finite and max_abs <= atol
    result = {
        "sizes": [list(s) for s in sizes],
        "max_abs": max_abs,
        "max_rel": max(r["max_rel"] for r in per_output.values()),
        "per_size": per_size,
        "outputs": per_output,
        "atol": float(atol),
        "passed": bool(passed),
    }
    if rtol is not None:
        result["rtol"] = float(rtol)
    return result
