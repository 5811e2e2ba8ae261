#!/usr/bin/env python3
"""Run an edgedp export with ONNX Runtime on the device (no PyTorch, no edgedp needed).

Needs numpy and onnxruntime (CPU) or onnxruntime-gpu (CUDA / TensorRT providers; on a Jetson the
wheel from NVIDIA's Jetson Zoo).  OpenCV is optional.  Copy this folder (``export/``) and the
export folder written by ``edgedp export SCENE --format onnx -o OUT`` to the device.

Usage:
  python run_onnx.py render  OUT [--latent L.npy] [-o DIR] [--provider auto|cpu|cuda|tensorrt] [--repeat N]
      re-render the fitted scene; writes DIR/left.png, right.png, allinfocus.png (16-bit)
  python run_onnx.py refocus OUT --focus F [--aperture A] [--image AIF.png|.npy] [-o DIR]
  python run_onnx.py refocus OUT --sweep N [--aperture A] [-o DIR]
      synthetic refocus (focus F = signed blur radius in px brought into focus, aperture scale A);
      writes DIR/refocus_f<F>_a<A>.png, or DIR/sweep_<i>_f<F>_a<A>.png for N focus values across
      the scene's radii range
  python run_onnx.py predict OUT LEFT RIGHT [--black-level B] [--white-level W] [--fit pad|crop] [-o DIR]
      G_D on a new DP pair (16-bit PNGs or .npy; v = (raw - B) / W); writes DIR/defocus.npy
      (1, 1, H, W signed blur radius px) and DIR/defocus.png (blue = in front, red = behind)
  python run_onnx.py instant OUT LEFT RIGHT [--black-level B] [--white-level W] [--flat-field WL WR]
                     [--crop HxW] [-o DIR]
      the instant path of a device-profile export (``edgedp export PHONE.profile -o OUT``):
      G_D's alphas, the closed-form per-layer latent map and the per-pixel layer likelihood
      (instant.py, numpy) give DIR/allinfocus.png (16-bit), DIR/defocus.npy ((H, W) signed blur
      radius px) and DIR/defocus.png; input settings default to the profile's; prints each part's time

Common options: -o/--out DIR (default ./edgedp-run), --overwrite (outputs are never replaced
without it), --repeat N (time N calls), --provider (auto prefers CUDA when the installed
onnxruntime offers it), --threads N (CPU intra-op threads).  After creating each session the
runner prints the provider that REALLY runs it (``session.get_providers()``) and warns when the
requested one fell back to the CPU.  Errors are one line (``error: ...``) with exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import RunnerError  # noqa: E402

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _import_ort():
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as err:
        raise RunnerError(
            f"onnxruntime is not installed ({err}); pip install onnxruntime (CPU) or onnxruntime-gpu "
            f"(on a Jetson: the onnxruntime-gpu wheel for your JetPack from NVIDIA's Jetson Zoo)"
        )
    return ort


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """Provider list for ``requested`` given ``ort.get_available_providers()``."""
    if requested == "auto":
        return PROVIDERS["cuda"] if "CUDAExecutionProvider" in available else PROVIDERS["cpu"]
    wanted = PROVIDERS[requested]
    if wanted[0] not in available:
        print(
            f"warning: --provider {requested}: {wanted[0]} is not offered by this onnxruntime "
            f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA/TensorRT",
            file=sys.stderr,
        )
    return [p for p in wanted if p in available] or ["CPUExecutionProvider"]


class OrtModel:
    def __init__(self, session) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def __call__(self, feeds: dict) -> dict:
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs))


class OrtBackend:
    def __init__(self, requested: str, threads: int | None, verbose: bool) -> None:
        self.ort = _import_ort()
        self.requested = requested
        self.threads = threads
        self.verbose = verbose

    def load(self, graph: common.GraphInfo, input_shape=None) -> OrtModel:
        path = common.graph_file(graph, ".onnx", "re-export with 'edgedp export SCENE --format onnx'")
        ort = self.ort
        available = list(ort.get_available_providers())
        providers = choose_providers(self.requested, available)
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        if self.verbose:
            options.log_severity_level = 1  # INFO: shows which nodes go to which provider
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RunnerError(f"{path}: onnxruntime cannot load it: {first}")
        real = session.get_providers()
        print(f"provider: {real[0]} runs {graph.name} (session providers: {', '.join(real)}; requested {self.requested})")
        if self.requested != "cpu" and real[0] == "CPUExecutionProvider":
            if self.requested != "auto" or "CUDAExecutionProvider" in available:
                print(
                    f"warning: requested {self.requested} but {graph.name} runs on CPUExecutionProvider "
                    f"(fell back; see export/README.md, troubleshooting)",
                    file=sys.stderr,
                )
        return OrtModel(session)


def backend_args(parser) -> None:
    parser.add_argument(
        "--provider", choices=("auto", "cpu", "cuda", "tensorrt"), default="auto",
        help="execution provider (auto: CUDA when onnxruntime-gpu offers it, else CPU)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: ORT's choice)")
    parser.add_argument("--verbose", action="store_true", help="ORT info logging (node placement per provider)")


def main(argv: list[str] | None = None) -> int:
    return common.run_cli(
        argv, "run_onnx.py", __doc__, backend_args,
        lambda args: OrtBackend(args.provider, args.threads, args.verbose),
    )


if __name__ == "__main__":
    sys.exit(main())
