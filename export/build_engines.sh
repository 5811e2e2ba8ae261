#!/usr/bin/env bash
# Build TensorRT engines from an edgedp export folder with trtexec, on the device that runs them
# (an engine is tied to the GPU and the TensorRT version it was built with: build on the Jetson).
#
#   JetPack 5.1.x  = TensorRT 8.5  (parses ONNX opset <= 17: edgedp exports opset 17)
#   JetPack 6.x    = TensorRT 8.6 (6.0 DP) / 10.x (6.1, 6.2)
#
# Usage:
#   export/build_engines.sh [options] EXPORT_DIR [-- EXTRA_TRTEXEC_ARGS...]
#
# Options:
#   --fp16             let TensorRT pick FP16 kernels (faster on Jetson; inputs and outputs stay
#                      float32; measured FP16-emulation errors in export/README.md); gd.onnx's
#                      input standardization stays FP32 (the sidecar's graphs.gd.fp32_nodes)
#   --workspace MIB    builder scratch memory limit in MiB (default 1024; lower it on 8 GB boards)
#   --min HxW          gd.onnx optimization profile: smallest pair size     (default: multiple_of^2)
#   --opt HxW          size TensorRT tunes its kernels for   (default: the scene's size, rounded up)
#   --max HxW          largest pair size the engine accepts  (default: 2 x opt)
#                      (all three must be multiples of the sidecar's graphs.gd.multiple_of)
#   --only LIST        comma-separated subset of render,refocus,gd (default: every graph present)
#   --trtexec PATH     trtexec binary (default: trtexec on PATH, else /usr/src/tensorrt/bin/trtexec,
#                      where JetPack installs it)
#   --dry-run          print the commands, build nothing
#
# Sizes come from the sidecar EXPORT_DIR/export.json (written by `edgedp export`), read with
# python3's json module: graphs.<name>.file, graphs.gd.inputs.pair = [1, 2, "H", "W"],
# graphs.gd.multiple_of, and for the default opt size graphs.gd.opt_hw or the scene's size
# (top-level height / width, else the last two dims of graphs.render.inputs' first input).
#
# trtexec flags used (one command per graph):
#   --onnx=FILE            the ONNX graph to parse (TensorRT's built-in ONNX parser)
#   --saveEngine=FILE      write the serialized engine (FILE.engine beside the ONNX file)
#   --fp16                 allow FP16 precision in addition to FP32 (only with --fp16 here)
#   --precisionConstraints=obey --layerPrecisions=NODE:fp32,...
#                          (gd.onnx with --fp16) keep the named layers in FP32: the ONNX parser
#                          names each node's layer after the node; trtexec sets the precision of
#                          the layers whose names match and ignores names it does not find.
#                          TensorRT >= 8.4 (JetPack 5.1 and 6.x); skipped with a note on older ones.
#   --memPoolSize=workspace:N
#                          cap the builder's workspace pool at N MiB: TensorRT >= 8.4, so JetPack
#                          5.1 (8.5) and 6.x (8.6 / 10.x).  A plain number is MiB on every version
#                          (8.6+ also takes suffixes such as 1024M or 1G; 8.5 does not).
#   --workspace=N          the older spelling (N MiB): deprecated since 8.4, removed in 10.0.  8.5
#                          still accepts it with a deprecation warning; this script uses it only
#                          when trtexec reports a TensorRT older than 8.4 (JetPack 4.6 = 8.2).
#   --minShapes=pair:1x2xHxW / --optShapes=... / --maxShapes=...
#                          the optimization profile of gd.onnx's dynamic input `pair`; an engine
#                          built this way accepts any size between min and max (per dim).  The
#                          static graphs (render, refocus) take no shape flags.
#   After building, trtexec runs a short timing pass on random inputs (a sanity check that the
#   engine executes); add `-- --skipInference` to skip it where your trtexec has that flag.
set -euo pipefail

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "build_engines.sh: error: $*" >&2; exit 2; }

FP16=0
WORKSPACE=1024
MIN_HW="" OPT_HW="" MAX_HW=""
ONLY=""
TRTEXEC=""
DRY=0
DIR=""
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --fp16) FP16=1; shift ;;
    --workspace) WORKSPACE="${2:?--workspace needs MiB}"; shift 2 ;;
    --min) MIN_HW="${2:?--min needs HxW}"; shift 2 ;;
    --opt) OPT_HW="${2:?--opt needs HxW}"; shift 2 ;;
    --max) MAX_HW="${2:?--max needs HxW}"; shift 2 ;;
    --only) ONLY="${2:?--only needs a list}"; shift 2 ;;
    --trtexec) TRTEXEC="${2:?--trtexec needs a path}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z "$DIR" ]] || die "one EXPORT_DIR only (got $DIR and $1)"; DIR="$1"; shift ;;
  esac
done
[[ -n "$DIR" ]] || { usage >&2; exit 2; }
SIDECAR="$DIR/export.json"
[[ -f "$SIDECAR" ]] || die "$SIDECAR not found: run 'edgedp export SCENE_DIR --format onnx -o $DIR' first"
[[ "$WORKSPACE" =~ ^[0-9]+$ && "$WORKSPACE" -ge 1 ]] || die "--workspace must be a whole number of MiB, got $WORKSPACE"

if [[ -z "$TRTEXEC" ]]; then
  if command -v trtexec >/dev/null 2>&1; then TRTEXEC="$(command -v trtexec)"
  elif [[ -x /usr/src/tensorrt/bin/trtexec ]]; then TRTEXEC=/usr/src/tensorrt/bin/trtexec
  elif [[ "$DRY" -eq 1 ]]; then TRTEXEC=trtexec
  else die "trtexec not found: install JetPack (TensorRT) or pass --trtexec PATH"
  fi
fi

# TensorRT version as an integer (8502 = 8.5.2) from trtexec's banner; 0 when unknown.
TRT_VER=0
if [[ "$DRY" -eq 0 ]]; then
  TRT_VER="$("$TRTEXEC" --help 2>&1 | sed -n 's/.*TensorRT v\([0-9]\{1,\}\).*/\1/p' | head -n 1)"
  TRT_VER="${TRT_VER:-0}"
fi
if [[ "$TRT_VER" -gt 0 && "$TRT_VER" -lt 8400 ]]; then
  WS_FLAG="--workspace=$WORKSPACE"            # TensorRT < 8.4 (JetPack 4.x)
else
  WS_FLAG="--memPoolSize=workspace:$WORKSPACE" # TensorRT 8.4+, 8.5 (JetPack 5.1), 8.6 / 10.x (JetPack 6)
fi

# Read one value from the sidecar: py EXPR (J = the parsed export.json; prints "" when missing).
py() {
  python3 -c '
import json, sys
J = json.load(open(sys.argv[1]))
try:
    v = eval(sys.argv[2], {"J": J})
except (KeyError, IndexError, TypeError):
    v = ""
print("" if v is None else v)
' "$SIDECAR" "$1"
}

want() { [[ -z "$ONLY" || ",$ONLY," == *",$1,"* ]]; }
check_hw() { [[ "$1" =~ ^[0-9]+x[0-9]+$ ]] || die "$2 must be HxW (e.g. 1008x1344), got $1"; }

run() {
  echo "+ $*"
  if [[ "$DRY" -eq 0 ]]; then "$@"; fi
}

PREC=()
[[ "$FP16" -eq 1 ]] && PREC=(--fp16)
BUILT=0

for g in render refocus; do
  want "$g" || continue
  f="$(py "J['graphs']['$g']['file']")"
  [[ -n "$f" ]] || { echo "skip $g: not in $SIDECAR"; continue; }
  [[ -f "$DIR/$f" ]] || die "$DIR/$f listed in $SIDECAR but missing"
  run "$TRTEXEC" --onnx="$DIR/$f" --saveEngine="$DIR/${f%.onnx}.engine" "$WS_FLAG" ${PREC[@]+"${PREC[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
  BUILT=$((BUILT + 1))
done

if want gd; then
  f="$(py "J['graphs']['gd']['file']")"
  if [[ -z "$f" ]]; then
    echo "skip gd: not in $SIDECAR"
  else
    [[ -f "$DIR/$f" ]] || die "$DIR/$f listed in $SIDECAR but missing"
    M="$(py "J['graphs']['gd']['multiple_of']")"
    M="${M:-8}"
    NAME="$(py "list(J['graphs']['gd']['inputs'])[0]")"
    NAME="${NAME:-pair}"
    # FP16: keep G_D's input standardization in FP32 (its layers, named after the ONNX nodes)
    PIN=()
    if [[ "$FP16" -eq 1 ]]; then
      LP="$(py "','.join(n + ':fp32' for n in J['graphs']['gd'].get('fp32_nodes', []))")"
      if [[ -n "$LP" && ( "$TRT_VER" -eq 0 || "$TRT_VER" -ge 8400 ) ]]; then
        PIN=(--precisionConstraints=obey "--layerPrecisions=$LP")
      elif [[ -n "$LP" ]]; then
        echo "note: trtexec of TensorRT $TRT_VER has no --layerPrecisions; gd's standardization is FP16-safe by construction"
      fi
    fi
    if [[ "$(py "J['graphs']['gd'].get('dynamic', True)")" == "False" ]]; then
      # static G_D: its size is fixed in the graph, no profile
      run "$TRTEXEC" --onnx="$DIR/$f" --saveEngine="$DIR/${f%.onnx}.engine" "$WS_FLAG" ${PREC[@]+"${PREC[@]}"} \
        ${PIN[@]+"${PIN[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
    else
      up() { echo $(( ($1 + M - 1) / M * M )); }
      if [[ -z "$OPT_HW" ]]; then
        OPT_HW="$(py "'x'.join(str(v) for v in J['graphs']['gd']['opt_hw'])")"
        if [[ -z "$OPT_HW" ]]; then  # the scene's size: top-level height / width of the sidecar
          OPT_HW="$(py "'%dx%d' % (J['height'], J['width'])")"
        fi
        if [[ -z "$OPT_HW" ]]; then
          OPT_HW="$(py "'x'.join(str(v) for v in list(J['graphs']['render']['inputs'].values())[0][-2:])")"
        fi
        OPT_HW="${OPT_HW:-1008x1344}"
        OPT_HW="$(up "${OPT_HW%x*}")x$(up "${OPT_HW#*x}")"
      fi
      check_hw "$OPT_HW" --opt
      MIN_HW="${MIN_HW:-${M}x${M}}"
      MAX_HW="${MAX_HW:-$(( ${OPT_HW%x*} * 2 ))x$(( ${OPT_HW#*x} * 2 ))}"
      check_hw "$MIN_HW" --min
      check_hw "$MAX_HW" --max
      for hw in "$MIN_HW" "$OPT_HW" "$MAX_HW"; do
        (( ${hw%x*} % M == 0 && ${hw#*x} % M == 0 )) || die "gd size $hw is not a multiple of $M (graphs.gd.multiple_of)"
      done
      (( ${MIN_HW%x*} <= ${OPT_HW%x*} && ${OPT_HW%x*} <= ${MAX_HW%x*} &&
         ${MIN_HW#*x} <= ${OPT_HW#*x} && ${OPT_HW#*x} <= ${MAX_HW#*x} )) || die "need min <= opt <= max per dim"
      run "$TRTEXEC" --onnx="$DIR/$f" --saveEngine="$DIR/${f%.onnx}.engine" "$WS_FLAG" ${PREC[@]+"${PREC[@]}"} \
        ${PIN[@]+"${PIN[@]}"} \
        --minShapes="$NAME:1x2x$MIN_HW" --optShapes="$NAME:1x2x$OPT_HW" --maxShapes="$NAME:1x2x$MAX_HW" ${EXTRA[@]+"${EXTRA[@]}"}
    fi
    BUILT=$((BUILT + 1))
  fi
fi

[[ "$BUILT" -gt 0 ]] || die "no graph built (check --only and $SIDECAR)"
echo "done: $BUILT engine(s) in $DIR"
