"""ONNX Runtime backend of ``edgedp-runtime`` (``--backend ort``, the default).

Needs onnxruntime (CPU) or onnxruntime-gpu (CUDA / TensorRT execution providers; on a Jetson the
wheel for your JetPack from NVIDIA's Jetson Zoo).

What it reports, and how it knows: ONNX Runtime places each node on one of the session's
providers and silently falls back when a provider cannot be created or does not take a node.
``session.get_providers()`` lists the *registered* providers only, so the first call of every
graph runs with ONNX Runtime's profiler on (``SessionOptions.enable_profiling``); its trace names
the provider of every node it executed, and the runner prints the count per provider
(``provider: render ran 58 nodes on CUDAExecutionProvider, 3 on CPUExecutionProvider``) and a
one-line ``warning:`` when compute nodes ran somewhere other than the requested provider.  Where
the profile cannot be read it says "requested" rather than "ran".

The TensorRT execution provider builds engines on first use (minutes on a Jetson); the runner
turns on its engine cache (``trt_engine_cache_enable`` / ``trt_engine_cache_path``, default
``EXPORT/trt_cache``) so later runs load them, and ``--fp16`` sets ``trt_fp16_enable``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import weakref
from collections import Counter
from pathlib import Path

from . import schema
from .quiet import ort_load
from .errors import RunnerError

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
FALLBACKS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
#: Shape bookkeeping ONNX Runtime keeps on the CPU next to a GPU provider (normal, cheap).
SHAPE_OPS = frozenset(
    {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Reshape", "Constant", "ConstantOfShape", "Range",
     "Identity", "Slice", "Expand", "Size"}
)


def import_ort():
    try:
        from .quiet import import_onnxruntime  # noqa: PLC0415

        ort = import_onnxruntime()
    except ImportError as err:
        raise RunnerError(
            f"onnxruntime is not installed ({err}); pip install onnxruntime (CPU) or onnxruntime-gpu "
            f"(on a Jetson: the onnxruntime-gpu wheel for your JetPack from NVIDIA's Jetson Zoo)"
        ) from None
    return ort


def resolve_provider(requested: str, available: list[str]) -> str:
    """auto -> cuda when the installed onnxruntime offers CUDA, else cpu; others unchanged."""
    if requested == "auto":
        return "cuda" if "CUDAExecutionProvider" in available else "cpu"
    return requested


def choose_providers(requested: str, available: list[str], *, fp16: bool = False, trt_cache: Path | None = None):
    """``(providers, warning)``: the provider list for ``InferenceSession`` (TensorRT with its
    options as a ``(name, options)`` tuple) and a one-line warning when the requested provider
    is not offered by the installed onnxruntime (None otherwise).  ``requested``: auto, cpu,
    cuda or tensorrt (auto = CUDA when offered, else CPU)."""
    requested = resolve_provider(requested, available)
    wanted = FALLBACKS[requested]
    warning = None
    if wanted[0] not in available:
        warning = (
            f"warning: --provider {requested}: {wanted[0]} is not offered by this onnxruntime "
            f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA / TensorRT"
        )
    providers: list = []
    for name in wanted:
        if name not in available:
            continue
        if name == "TensorrtExecutionProvider":
            options = {"trt_fp16_enable": bool(fp16)}
            if trt_cache is not None:
                options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache))
            providers.append((name, options))
        else:
            providers.append(name)
    return providers or ["CPUExecutionProvider"], warning


def node_placement(profile_path: str | Path) -> tuple[Counter, Counter]:
    """From an ONNX Runtime profile (Chrome trace JSON): ``(nodes per provider, compute nodes per
    provider)`` over the node kernels it ran (compute = not one of :data:`SHAPE_OPS`)."""
    events = json.loads(Path(profile_path).read_text(encoding="utf-8"))
    nodes: Counter = Counter()
    compute: Counter = Counter()
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        args = event.get("args") or {}
        provider = args.get("provider")
        if not provider:
            continue
        nodes[provider] += 1
        if args.get("op_name") not in SHAPE_OPS:
            compute[provider] += 1
    return nodes, compute


def placement_report(graph: str, requested: str, want: str | None, nodes: Counter, compute: Counter) -> tuple[str, str | None]:
    """The ``provider:`` line and, when compute nodes of ``graph`` ran off ``want`` (the provider
    ``requested`` resolves to), a one-line ``warning:`` (``want`` None: no warning, the provider
    was not even offered and that was said already)."""
    ranked = nodes.most_common()
    if ranked:
        parts = [f"{ranked[0][1]} nodes ran on {ranked[0][0]}"] + [f"{n} on {p}" for p, n in ranked[1:]]
        line = f"provider: {graph}: {', '.join(parts)} (ONNX Runtime profile of the first call)"
    else:
        line = f"provider: {graph}: the profile of the first call lists no nodes"
    off = {p: n for p, n in compute.items() if p != want}
    if want is None or not off:
        return line, None
    where = ", ".join(f"{n} on {p}" for p, n in sorted(off.items(), key=lambda kv: -kv[1]))
    total = sum(compute.values())
    return line, (
        f"warning: requested {requested} ({want}) but {sum(off.values())} of {total} compute nodes of {graph} "
        f"ran elsewhere: {where}"
    )


class OrtModel:
    """One ONNX Runtime session as a runner model (``feeds -> {name: array}``); the first call is
    profiled to report the providers that ran it."""

    def __init__(self, session, graph: str, requested: str, want: str | None, profile_dir: str | None) -> None:
        self.session = session
        self.graph = graph
        self.requested = requested
        self.want = want
        self.profile_dir = profile_dir
        if profile_dir is not None:  # a model that is never called leaves no profile folder behind
            weakref.finalize(self, shutil.rmtree, profile_dir, True)
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def __call__(self, feeds: dict) -> dict:
        outputs = self.session.run(self.output_names, feeds)
        if self.profile_dir is not None:
            self.report_placement()
        return dict(zip(self.output_names, outputs))

    def report_placement(self) -> None:
        folder, self.profile_dir = self.profile_dir, None
        try:
            nodes, compute = node_placement(self.session.end_profiling())
        except Exception as err:  # noqa: BLE001 - an unreadable profile only costs the report
            providers = ", ".join(self.session.get_providers())
            print(f"provider: requested {self.requested} for {self.graph} (session providers: {providers}; "
                  f"per-node placement unknown: {type(err).__name__})")
            return
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        line, warning = placement_report(self.graph, self.requested, self.want, nodes, compute)
        print(line)
        if warning:
            print(warning, file=sys.stderr)


class OrtBackend:
    def __init__(
        self, requested: str = "auto", threads: int | None = None, verbose: bool = False, *,
        fp16: bool = False, trt_cache: Path | None = None,
    ) -> None:
        self.ort = import_ort()
        self.requested = requested
        self.threads = threads
        self.verbose = verbose
        self.fp16 = fp16
        self.trt_cache = trt_cache
        self.warned = False

    def load(self, graph: schema.GraphInfo, input_shape=None) -> OrtModel:
        path = schema.graph_file(graph, schema.ONNX_SUFFIX, "re-export with 'edgedp export SCENE --format onnx'")
        ort = self.ort
        available = list(ort.get_available_providers())
        cache = self.trt_cache if self.requested == "tensorrt" else None
        if cache is not None and "TensorrtExecutionProvider" in available:
            try:
                cache.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise RunnerError(f"{cache}: cannot create the TensorRT engine cache folder ({err.strerror or err}); "
                                  f"pass --trt-cache DIR") from None
        providers, warning = choose_providers(self.requested, available, fp16=self.fp16, trt_cache=cache)
        if warning and not self.warned:
            print(warning, file=sys.stderr)
            self.warned = True
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        if self.verbose:
            options.log_severity_level = 1  # INFO: ORT's own log of node assignment
        else:
            # fatal only: a failed load's own lines (e.g. a profiling session's "Could not write a
            # profile because no model was loaded") go into the one error line of ort_load
            options.log_severity_level = 4
        profile_dir = tempfile.mkdtemp(prefix="edgedp-ort-profile-")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / graph.name)
        try:
            session = ort_load(ort, str(path), options, providers, RunnerError, str(path))
        except RunnerError:
            shutil.rmtree(profile_dir, ignore_errors=True)
            raise
        print(f"session: {graph.name} with {', '.join(session.get_providers())} (requested {self.requested})")
        want = PROVIDER_NAMES[resolve_provider(self.requested, available)]
        want = want if want in available else None  # not offered: warned above already
        return OrtModel(session, graph.name, self.requested, want, profile_dir)
