"""``edgedp-runtime``: run an edgedp export on the device, with ONNX Runtime or TensorRT engines.

No PyTorch, no edgedp: numpy, plus onnxruntime (``--backend ort``, the default) or the TensorRT
Python bindings and a CUDA binding (``--backend trt``).

Usage:
  edgedp-runtime render  EXPORT [--latent L.npy] [-o DIR] [--repeat N] [--npy]
      re-render the fitted scene: DIR/left.png, right.png, allinfocus.png (16-bit grey)
  edgedp-runtime refocus EXPORT (--focus F | --sweep N) [--aperture A] [--image AIF.png|.npy] [-o DIR]
      synthetic refocus (focus F = signed blur radius in px brought into focus, aperture scale
      A >= 0): DIR/refocus_f<F>_a<A>.png, or DIR/sweep_<i>_f<F>_a<A>.png for N focus values
      across the scene's radii
  edgedp-runtime predict EXPORT LEFT RIGHT [--black-level B] [--white-level W] [--fit pad|crop] [-o DIR]
      G_D on a new DP pair (16-bit PNGs or .npy; v = (raw - B) / W, clipped to [0, 1]):
      DIR/defocus.npy (1, 1, H, W signed blur radius px), DIR/defocus.png
  edgedp-runtime instant EXPORT LEFT RIGHT [--black-level B] [--white-level W] [--flat-field WL WR]
                 [--crop HxW] [-o DIR]
      the instant path of a device-profile export (edgedp export PHONE.profile): G_D, the
      closed-form per-layer latent map and the layer likelihood (edgedp_runtime.instant):
      DIR/allinfocus.png, DIR/defocus.npy ((H, W) signed blur radius px), DIR/defocus.png

Backends and their options:
  --backend ort   ONNX Runtime.  --provider auto|cpu|cuda|tensorrt (auto: CUDA when the installed
                  onnxruntime offers it), --threads N (CPU intra-op threads; instant: also its layer
                  loops), --verbose (ORT's
                  info log), with --provider tensorrt: --fp16 (TensorRT EP FP16 kernels) and
                  --trt-cache DIR (TensorRT EP engine cache, default EXPORT/trt_cache; engines
                  are built once, not on every run).  The first call is profiled and the runner
                  prints on which provider each graph's nodes ran.
  --backend trt   prebuilt TensorRT engines beside the ONNX files (EXPORT/<graph>.engine: build
                  them on the device with build_engines.sh or edgedp export --format engine).
                  --cuda auto|cuda-python|pycuda picks the CUDA binding (auto: cuda-python,
                  falling back to pycuda).
An option of the other backend is refused, as is a NaN or infinite number.

Common options: -o/--out DIR (default ./edgedp-run), --overwrite (outputs are never replaced
without it), --repeat N (time N calls).  Errors are one line (``error: ...``), exit status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .device_io import (
    centre_crop,
    check_shape,
    check_writable,
    colorize_defocus,
    focus_tag,
    load_npy,
    main_guard,
    normalize_raw,
    pad_to_multiple,
    parse_crop,
    read_image,
    read_linear,
    sweep_values,
    timed,
    write_npy,
    write_png8_rgb,
    write_png16,
)
from .errors import EXIT_USER_ERROR, RunnerError
from .memory import memory_budget
from .schema import ExportInfo, load_export

BACKENDS = ("ort", "trt")
#: Options of each backend (argparse dests, all defaulting to None so explicit use is visible)
#: and the value they take when not given.
BACKEND_OPTIONS: dict[str, dict[str, Any]] = {
    "ort": {"provider": "auto", "threads": None, "verbose": False, "fp16": False, "trt_cache": None},
    "trt": {"cuda": "auto"},
}
#: ORT options that only mean something for the TensorRT execution provider.
TENSORRT_EP_OPTIONS = ("fp16", "trt_cache")


class Parser(argparse.ArgumentParser):
    """argparse with edgedp's error convention: one line ``error: ...`` and exit status 2
    (argparse's default prints the usage block first)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def finite(value: str) -> float:
    """argparse type: a finite float (NaN and inf refused)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return number


def non_negative(value: str) -> float:
    number = finite(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return number


def positive(value: str) -> float:
    number = finite(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def count(value: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return number


def add_common_args(parser, what: str) -> None:
    parser.add_argument("export", help="export folder written by 'edgedp export' (holds export.json)")
    parser.add_argument("-o", "--out", default="edgedp-run", help="output folder (default: ./edgedp-run)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--repeat", type=count, default=1, help=f"run each {what} call N times and print timings")


def add_backend_args(parser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="ort", help="ort: ONNX Runtime (default); trt: TensorRT engines")
    ort = parser.add_argument_group("ONNX Runtime (--backend ort)")
    ort.add_argument(
        "--provider", choices=("auto", "cpu", "cuda", "tensorrt"), default=None,
        help="execution provider (default auto: CUDA when onnxruntime-gpu offers it, else CPU)",
    )
    ort.add_argument("--threads", type=count, default=None, help="CPU threads: ORT's intra-op threads, and instant's numpy layer loops (default: ORT's choice; the CPU count)")
    ort.add_argument("--verbose", action="store_true", default=None, help="ORT info logging")
    ort.add_argument("--fp16", action="store_true", default=None, help="--provider tensorrt: allow FP16 kernels")
    ort.add_argument(
        "--trt-cache", default=None, metavar="DIR",
        help="--provider tensorrt: engine cache folder (default EXPORT/trt_cache)",
    )
    trt = parser.add_argument_group("TensorRT engines (--backend trt)")
    trt.add_argument(
        "--cuda", choices=("auto", "cuda-python", "pycuda"), default=None,
        help="CUDA Python binding for buffers (default auto: cuda-python, else pycuda)",
    )


def build_parser(prog: str = "edgedp-runtime") -> Parser:
    parser = Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgedp-runtime {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{render,refocus,predict,instant}")
    sub.required = True

    p = sub.add_parser("render", help="re-render the fitted scene: left/right/allinfocus 16-bit PNGs")
    add_common_args(p, "render")
    p.add_argument("--latent", help="latent map .npy (1, L, H, W); default: the export's test input")
    p.add_argument("--npy", action="store_true", help="also write the unclipped float outputs as .npy")
    add_backend_args(p)

    p = sub.add_parser("refocus", help="synthetic refocus of the all-in-focus image")
    add_common_args(p, "refocus")
    p.add_argument("--focus", type=finite, help="focus position: signed blur radius in px that becomes sharp")
    p.add_argument("--aperture", type=non_negative, default=1.0, help="aperture scale >= 0 (1 = as captured; default 1)")
    p.add_argument("--sweep", type=count, help="write N focus values across the scene's radii range instead of --focus")
    p.add_argument("--image", help="all-in-focus image (.npy or 16-bit PNG); default: the export's test input")
    p.add_argument("--npy", action="store_true", help="also write the unclipped float outputs as .npy")
    add_backend_args(p)

    p = sub.add_parser("predict", help="predict a defocus map from a new DP pair with G_D")
    add_common_args(p, "predict")
    p.add_argument("left", help="left view: 16-bit PNG or .npy")
    p.add_argument("right", help="right view: 16-bit PNG or .npy")
    p.add_argument("--black-level", type=non_negative, default=0.0, help="raw black level (default 0)")
    p.add_argument(
        "--white-level", type=positive, default=None,
        help="v = (raw - black) / white; default: full scale - black (65535 for 16-bit PNG, 1 for .npy)",
    )
    p.add_argument(
        "--fit", choices=("pad", "crop"), default="pad",
        help="make H, W multiples of the graph's multiple_of by edge padding (then cropped back) or central crop",
    )
    p.add_argument("--limit", type=positive, default=None, help="radius (px) that saturates defocus.png colours")
    p.add_argument("--save-alphas", action="store_true", help="also write alphas.npy (1, L, H, W)")
    add_backend_args(p)

    p = sub.add_parser("instant", help="defocus map and quick all-in-focus image of a new DP pair (profile export)")
    add_common_args(p, "instant")
    p.add_argument("left", help="left view: 16-bit PNG or .npy")
    p.add_argument("right", help="right view: 16-bit PNG or .npy")
    p.add_argument("--black-level", type=non_negative, default=None, help="raw black level (default: the profile's, else 0)")
    p.add_argument(
        "--white-level", type=positive, default=None,
        help="v = (raw - black) / white, unclipped; default: the profile's, else 2**bits - 1 (1 for .npy)",
    )
    p.add_argument(
        "--flat-field", nargs=2, metavar=("WHITE_LEFT", "WHITE_RIGHT"), default=None,
        help="white-sheet frames: right view *= box101(WL - black) / box101(WR - black) (default: the profile's)",
    )
    p.add_argument("--no-flat-field", action="store_true", help="ignore the profile's flat-field frames")
    p.add_argument("--crop", type=_crop, default=None, help="centred crop HxW (e.g. 1008x1344) after the flat field")
    p.add_argument("--limit", type=positive, default=None, help="radius (px) that saturates defocus.png colours")
    p.add_argument("--npy", action="store_true", help="also write the unclipped all-in-focus image as allinfocus.npy")
    p.add_argument(
        "--max-memory", default=None, metavar="GIB",
        help="memory budget (GiB); a frame whose instant path needs more is refused (default: 0.6 x the free memory, at most 16)",
    )
    add_backend_args(p)
    return parser


def _crop(text: str) -> tuple[int, int]:
    try:
        return parse_crop(text)
    except RunnerError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def check_backend_options(args) -> None:
    """Refuse options the chosen backend (or provider) would ignore; fill in the defaults."""
    for backend, options in BACKEND_OPTIONS.items():
        for dest, default in options.items():
            given = getattr(args, dest) is not None
            if given and backend != args.backend:
                flag = "--" + dest.replace("_", "-")
                raise RunnerError(f"{flag} is an option of --backend {backend}, not of --backend {args.backend}")
            if not given:
                setattr(args, dest, default)
    if args.backend == "ort" and args.provider != "tensorrt":
        for dest in TENSORRT_EP_OPTIONS:
            if getattr(args, dest):
                flag = "--" + dest.replace("_", "-")
                raise RunnerError(f"{flag} applies to the TensorRT execution provider only: add --provider tensorrt")
    if getattr(args, "command", None) == "refocus" and (args.focus is None) == (args.sweep is None):
        raise RunnerError("refocus: pass exactly one of --focus F or --sweep N")


def make_backend(args, info: ExportInfo):
    if args.backend == "trt":
        from .trt_backend import TrtBackend  # noqa: PLC0415  (imports tensorrt)

        return TrtBackend(args.cuda)
    from .ort_backend import OrtBackend  # noqa: PLC0415  (imports onnxruntime)

    cache = Path(args.trt_cache) if args.trt_cache else info.folder / "trt_cache"
    return OrtBackend(args.provider, args.threads, args.verbose, fp16=args.fp16, trt_cache=cache)


def _scalar(value: float) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def cmd_render(args, info: ExportInfo, backend) -> int:
    graph = info.graph("render")
    model = backend.load(graph)
    (latent_name,) = graph.resolve_names("inputs", model.input_names)
    out_names = graph.resolve_names("outputs", model.output_names)
    source = Path(args.latent) if args.latent else graph.test_input
    if source is None:
        raise RunnerError("render: the sidecar names no test input; pass --latent FILE.npy")
    latent = load_npy(source, "latent map")
    check_shape(latent, graph.inputs.get(latent_name, graph.inputs.get("latent")), str(source))
    out = Path(args.out)
    targets = [out / f"{name}.png" for name in graph.spec.output_names]
    check_targets(targets, args)
    result = timed(lambda: model({latent_name: latent}), args.repeat, "render")
    for name, target in zip(out_names, targets):
        write_result(target, result[name], args)
    return 0


def check_targets(targets: list[Path], args) -> None:
    """Refuse (one line) before any work if an output PNG (or its .npy with --npy) exists."""
    for t in targets:
        check_writable(t, args.overwrite)
        if args.npy:
            check_writable(t.with_suffix(".npy"), args.overwrite)


def write_result(target: Path, array, args) -> None:
    """Write one output as a 16-bit PNG, and as .npy (unclipped) with --npy."""
    write_png16(target, array, args.overwrite)
    print(f"wrote {target}")
    if args.npy:
        print(f"wrote {write_npy(target.with_suffix('.npy'), array, args.overwrite)}")


def cmd_refocus(args, info: ExportInfo, backend) -> int:
    graph = info.graph("refocus")
    values = [args.focus] if args.sweep is None else sweep_values(info.radii, args.sweep)
    model = backend.load(graph)
    image_name, focus_name, aperture_name = graph.resolve_names("inputs", model.input_names)
    (out_name,) = graph.resolve_names("outputs", model.output_names)
    source = Path(args.image) if args.image else graph.test_input
    if source is None:
        raise RunnerError("refocus: the sidecar names no test input; pass --image FILE")
    if source.suffix.lower() == ".png":
        raw, depth = read_image(source, "all-in-focus image")
        image = normalize_raw(raw, 0.0, None, depth)[None, None]
    else:
        image = load_npy(source, "all-in-focus image")
        if image.ndim == 2:
            image = image[None, None]
    check_shape(image, graph.inputs.get(image_name, graph.inputs.get("image")), str(source))
    out = Path(args.out)
    ap = focus_tag(args.aperture)
    if args.sweep is None:
        targets = [out / f"refocus_f{focus_tag(v)}_a{ap}.png" for v in values]
    else:
        targets = [out / f"sweep_{i:02d}_f{focus_tag(v)}_a{ap}.png" for i, v in enumerate(values)]
    check_targets(targets, args)
    for value, target in zip(values, targets):
        feeds = {image_name: image, focus_name: _scalar(value), aperture_name: _scalar(args.aperture)}
        result = timed(lambda: model(feeds), args.repeat, f"refocus focus={value:g} aperture={args.aperture:g}")
        write_result(target, result[out_name], args)
    return 0


def cmd_predict(args, info: ExportInfo, backend) -> int:
    graph = info.graph("gd")
    multiple = graph.multiple_of
    views = []
    for path, side in ((args.left, "left view"), (args.right, "right view")):
        raw, depth = read_image(path, side)
        white = args.white_level
        if depth == 0 and white is None:
            white = 1.0 - args.black_level  # .npy: already linear
        views.append(normalize_raw(raw, args.black_level, white, max(depth, 1) if depth else 1))
    if views[0].shape != views[1].shape:
        raise RunnerError(f"{args.right}: right view is {views[1].shape}, left view is {views[0].shape}")
    pair = np.stack(views)[None].astype(np.float32)  # (1, 2, H, W), [left, right]
    pair, (h, w) = pad_to_multiple(pair, multiple, args.fit)
    out = Path(args.out)
    targets = [out / "defocus.npy", out / "defocus.png"] + ([out / "alphas.npy"] if args.save_alphas else [])
    for t in targets:
        check_writable(t, args.overwrite)
    model = backend.load(graph, input_shape=pair.shape)
    (pair_name,) = graph.resolve_names("inputs", model.input_names)
    alphas_name, defocus_name = graph.resolve_names("outputs", model.output_names)
    check_shape(pair, graph.inputs.get(pair_name, graph.inputs.get("pair")), "DP pair")
    result = timed(lambda: model({pair_name: pair}), args.repeat, f"predict {pair.shape[2]}x{pair.shape[3]}")
    defocus = np.asarray(result[defocus_name], np.float32)[..., :h, :w]
    write_npy(targets[0], defocus, args.overwrite)
    write_png8_rgb(targets[1], colorize_defocus(defocus[0, 0], args.limit), args.overwrite)
    if args.save_alphas:
        write_npy(targets[2], np.asarray(result[alphas_name], np.float32)[..., :h, :w], args.overwrite)
    print(
        f"defocus: {defocus.shape[2]}x{defocus.shape[3]} px, min {defocus.min():.3f}, "
        f"max {defocus.max():.3f}, mean {defocus.mean():.3f} (signed blur radius, px)"
    )
    for t in targets:
        print(f"wrote {t}")
    return 0


def instant_inputs(args, profile_input: dict, folder: Path, sensor: tuple[int, int] | None = None) -> tuple[np.ndarray, str]:
    """Read, normalize, flat-field correct and crop the pair of ``instant``; returns views
    (2, H, W) float32 and a one-line description of the settings used.  Flags win over the
    profile's input settings (``export.json`` ``profile.input``).  ``sensor``: the profile's
    (H, W); the views must be it or a centred crop of it (:func:`instant.sensor_crop`)."""
    black = args.black_level if args.black_level is not None else profile_input.get("black_level")
    black = float(black) if black is not None else 0.0
    white = args.white_level if args.white_level is not None else profile_input.get("white_level")
    white = float(white) if white is not None else None
    crop = args.crop  # (H, W) parsed by the argument parser, or None
    left = read_linear(args.left, "left view", black, white)
    right = read_linear(args.right, "right view", black, white)
    if left.shape != right.shape:
        raise RunnerError(
            f"left/right size mismatch: {args.left} is {left.shape[0]}x{left.shape[1]}, "
            f"{args.right} is {right.shape[0]}x{right.shape[1]} (HxW)"
        )
    frames, origin = None, "flag"
    if args.flat_field:
        frames = [Path(p) for p in args.flat_field]
    elif profile_input.get("flat_field") and not args.no_flat_field:
        # The profile names the frames it was tuned with: as given, else beside the export.
        frames, origin = [], "profile"
        for name in profile_input["flat_field"]:
            p = Path(name)
            frames.append(p if p.is_file() or p.is_absolute() else folder / p.name)
        missing = [p for p in frames if not p.is_file()]
        if missing:
            raise RunnerError(
                f"{missing[0]}: flat-field frame named by the profile not found; pass --flat-field "
                f"WHITE_LEFT WHITE_RIGHT or --no-flat-field"
            )
    if frames is not None:
        from . import instant  # noqa: PLC0415  (numpy only)

        white_frames = []
        for p, side in zip(frames, ("left", "right")):
            raw, _ = read_image(p, f"flat-field {side} frame")
            if raw.shape != left.shape:
                raise RunnerError(
                    f"{p}: flat-field {side} frame is {raw.shape[0]}x{raw.shape[1]} but the DP pair is "
                    f"{left.shape[0]}x{left.shape[1]} (HxW, before cropping)"
                )
            white_frames.append(raw)
        gain = instant.flat_field_gain(white_frames[0], white_frames[1], black)
        right = (right * gain).astype(np.float32)
    views = centre_crop(np.stack([left, right]), crop, str(args.left))
    # The left/right gain edgedp tune measured holds for captures read as it read them: with the
    # profile's own flat field (or none when it had none); another flat field replaces it.
    from . import instant  # noqa: PLC0415  (numpy only)

    view_gain = profile_input.get("view_gain")
    same_flat = instant.view_gain_applies(frames, profile_input.get("flat_field"), from_profile=origin == "profile")
    gain_note = ""
    if sensor is not None and (views.shape[1] > sensor[0] or views.shape[2] > sensor[1]):
        view_gain = None  # another sensor: cmd_instant refuses it (instant.sensor_crop) after the budget check
    if view_gain and same_flat:
        views[1] *= instant.view_gain_map(view_gain.get("coefficients", []), views.shape[1], views.shape[2], sensor)
        gain_note = ", profile view gain"
    text = (
        f"black {black:g}, white {'2**bits-1' if white is None else format(white, 'g')}, flat field "
        f"{'none' if frames is None else ' '.join(str(p) for p in frames) + f' ({origin})'}, "
        f"{views.shape[1]}x{views.shape[2]} px{gain_note}"
    )
    return views, text


def cmd_instant(args, info: ExportInfo, backend) -> int:
    from . import instant  # noqa: PLC0415  (numpy only)

    t0 = time.perf_counter()
    inst = instant.load_instant(info.folder)
    out = Path(args.out)
    targets = {name: out / name for name in ("allinfocus.png", "defocus.npy", "defocus.png")}
    if args.npy:
        targets["allinfocus.npy"] = out / "allinfocus.npy"
    for t in targets.values():
        check_writable(t, args.overwrite)
    sensor = (info.height, info.width) if info.height and info.width else None
    device = str((info.data.get("profile") or {}).get("device") or info.scene_id)
    views, settings = instant_inputs(args, inst.inputs, info.folder, sensor)
    try:
        budget = memory_budget(args.max_memory)
    except ValueError as err:
        raise RunnerError(str(err)) from None
    instant.check_budget(views.shape[1], views.shape[2], int(inst.radii.size), budget)
    if sensor is not None:  # the rule edgedp fit --profile applies too
        instant.sensor_crop(sensor, views.shape[1:], device)
    print(f"input: {settings}")
    print(f"kernels: {instant.describe_kernels(inst)}")
    if (info.height, info.width) != views.shape[1:]:
        print(f"note: the profile was tuned on {info.height}x{info.width} captures; this {views.shape[1]}x"
              f"{views.shape[2]} one is taken as their centred crop (view gain cut there)")
    t1 = time.perf_counter()
    graph = info.graph("gd")
    multiple = graph.multiple_of
    padded_shape = (1, 2) + tuple(-(-s // multiple) * multiple for s in views.shape[1:])
    model = backend.load(graph, input_shape=padded_shape)
    (pair_name,) = graph.resolve_names("inputs", model.input_names)
    alphas_name, _ = graph.resolve_names("outputs", model.output_names)
    t2 = time.perf_counter()
    seconds: dict = {}
    groups = inst.groups  # a kernel field's cell groups: once, with the export's loading

    def once():
        s0 = time.perf_counter()
        alphas = instant.run_gd(model, views, multiple, (pair_name, alphas_name))
        seconds["gd"] = time.perf_counter() - s0
        return instant.instant_predict(views, alphas, inst.predict_kernels, inst.radii, config=inst.config, timings=seconds,
                                       threads=args.threads, groups=groups)

    aif, defocus, _ = timed(once, args.repeat, "instant (gd + latent + fuse)")
    t3 = time.perf_counter()
    write_png16(targets["allinfocus.png"], aif, args.overwrite)
    write_npy(targets["defocus.npy"], defocus, args.overwrite)
    write_png8_rgb(targets["defocus.png"], colorize_defocus(defocus, args.limit), args.overwrite)
    if args.npy:
        write_npy(targets["allinfocus.npy"], aif, args.overwrite)
    t4 = time.perf_counter()
    print(
        f"time read {1000 * (t1 - t0):.0f} ms, load {1000 * (t2 - t1):.0f} ms, gd {1000 * seconds['gd']:.0f} ms, "
        f"latent {1000 * seconds['latent']:.0f} ms, fuse {1000 * seconds['fuse']:.0f} ms, "
        f"write {1000 * (t4 - t3):.0f} ms, total {1000 * (t4 - t0):.0f} ms (latent reg {seconds['latent_reg']:.3g})"
    )
    print(
        f"defocus: {defocus.shape[0]}x{defocus.shape[1]} px, min {defocus.min():.3f}, max {defocus.max():.3f}, "
        f"mean {defocus.mean():.3f} (signed blur radius, px)"
    )
    for t in targets.values():
        print(f"wrote {t}")
    return 0


COMMANDS = {"render": cmd_render, "refocus": cmd_refocus, "predict": cmd_predict, "instant": cmd_instant}


def main(argv: list[str] | None = None, prog: str = "edgedp-runtime") -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the subcommand; returns the exit status."""
    args = build_parser(prog).parse_args(argv)

    def go() -> int:
        check_backend_options(args)
        info = load_export(args.export)
        print(
            f"export: {info.folder} ({info.source} {info.scene_id}, {info.height}x{info.width} HxW, "
            f"{info.layers} layers)"
        )
        backend = make_backend(args, info)
        return COMMANDS[args.command](args, info, backend)

    return main_guard(go)


if __name__ == "__main__":
    sys.exit(main())
