#!/usr/bin/env bash
# GPU check of edgedp, ready to run on a machine with PyTorch (CUDA build) and onnxruntime (CPU),
# no TensorRT and no network needed.  Prints every number it measures:
#   1. environment: python, torch, CUDA device, onnxruntime and its providers;
#   2. `edgedp fit` of a Pixel 4 dev scene (default 001, the data README's protocol inputs:
#      black 1024, white 16383, white-sheet flat field, centred crop 1008x1344) on --device and on
#      the CPU, timed per stage (report.json), and the device fit's outputs against the CPU fit's
#      (all-in-focus PSNR / max diff, defocus diff) and both against the ground truth;
#   3. `edgedp export` of the device fit with ONNX Runtime verification, and `edgedp verify --half`
#      (FP16 emulation: what an FP16 TensorRT engine computes);
#   4. `edgedp-runtime` render / refocus / predict on that export (ONNX Runtime, CPU), timed.
#
# Usage: tools/device_check.sh [--device cuda|cpu] [--data DIR] [--scene 001] [--crop HxW]
#                              [--preset fast|default|best] [--out DIR] [--python PY]
#   --device cpu is the dry run (both fits on the CPU); use a small --crop (e.g. 128x160) to
#   finish quickly.  --data (or $EDGEDP_PIXEL4) defaults to the first of ../shared/data/pixel4,
#   ./shared/data/pixel4 and /work/shared/data/pixel4 that holds the scene.  The repository
#   does not need to be pip-installed: PYTHONPATH covers edgedp and export/ (edgedp_runtime).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEVICE=cuda CROP=1008x1344 PRESET=default SCENE=001 OUT="" DATA="${EDGEDP_PIXEL4:-}" PY=""
die() { echo "device_check.sh: error: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="${2:?--device needs cuda or cpu}"; shift 2 ;;
    --data) DATA="${2:?--data needs a folder}"; shift 2 ;;
    --scene) SCENE="${2:?--scene needs a name like 001}"; shift 2 ;;
    --crop) CROP="${2:?--crop needs HxW}"; shift 2 ;;
    --preset) PRESET="${2:?--preset needs a name}"; shift 2 ;;
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ "$DEVICE" == cuda || "$DEVICE" == cpu ]] || die "--device must be cuda or cpu, got $DEVICE"
[[ "$CROP" =~ ^[0-9]+x[0-9]+$ ]] || die "--crop must be HxW, got $CROP"
if [[ -z "$PY" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY="$(command -v python3 || true)"; fi
fi
[[ -n "$PY" ]] || die "no python3 found (pass --python)"
if [[ -z "$DATA" ]]; then
  for d in "$REPO/../shared/data/pixel4" "$REPO/shared/data/pixel4" /work/shared/data/pixel4; do
    if [[ -f "$d/${SCENE}_left.png" ]]; then DATA="$d"; break; fi
  done
fi
[[ -n "$DATA" && -f "$DATA/${SCENE}_left.png" ]] || die "Pixel 4 data with ${SCENE}_left.png not found (pass --data DIR)"
OUT="${OUT:-$REPO/out/device_check}"
mkdir -p "$OUT"
export PYTHONPATH="$REPO:$REPO/export${PYTHONPATH:+:$PYTHONPATH}"
EDGEDP=("$PY" -m edgedp)
RUNTIME=("$PY" -m edgedp_runtime)
IN=(--black-level 1024 --white-level 16383 --flat-field "$DATA/calibration/white_sheet_left.png"
    "$DATA/calibration/white_sheet_right.png" --crop "$CROP")

echo "== environment"
"$PY" - "$DEVICE" <<'PYEOF'
import sys
missing = []
for name in ("numpy", "torch", "typer", "cv2", "onnx", "onnxruntime"):
    try:
        __import__(name)
    except ImportError:
        missing.append(name)
if missing:
    print(f"device_check.sh: error: missing Python packages {missing}", file=sys.stderr)
    sys.exit(2)
import platform, numpy, torch, onnxruntime
print(f"python {platform.python_version()}, numpy {numpy.__version__}, torch {torch.__version__}, "
      f"onnxruntime {onnxruntime.__version__} {onnxruntime.get_available_providers()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"cuda {torch.version.cuda}, device {p.name}, {p.total_memory / 2**30:.1f} GiB, {torch.cuda.device_count()} device(s)")
else:
    print("cuda: not available")
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    print("device_check.sh: error: --device cuda but torch sees no CUDA device (use --device cpu for the dry run)", file=sys.stderr)
    sys.exit(2)
PYEOF

fit() {  # fit DEVICE FOLDER
  local t0 t1
  t0=$(date +%s%N)
  "${EDGEDP[@]}" fit "$DATA/${SCENE}_left.png" "$DATA/${SCENE}_right.png" -o "$2" "${IN[@]}" \
    --preset "$PRESET" --device "$1" --seed 0 --overwrite > "$2.log" 2>&1 || { tail -n 20 "$2.log" >&2; die "fit on $1 failed (log: $2.log)"; }
  t1=$(date +%s%N)
  echo "fit $1: wall $(( (t1 - t0) / 1000000 )) ms (log $2.log)"
}
echo "== fit ($SCENE, $CROP, preset $PRESET): $DEVICE, then cpu as the reference"
fit "$DEVICE" "$OUT/fit_$DEVICE"
if [[ "$DEVICE" == cpu ]]; then REF="$OUT/fit_cpu_ref"; else REF="$OUT/fit_cpu"; fi
fit cpu "$REF"

echo "== per stage, and $DEVICE against cpu"
"$PY" - "$OUT/fit_$DEVICE" "$REF" "$DATA/gt_all_in_focus/${SCENE}_gt.png" "$DEVICE" <<'PYEOF'
import json, sys
from pathlib import Path
import cv2
import numpy as np
from edgedp.metrics import evaluate, psnr


def read16(path):  # 16-bit PNG -> [0, 1]
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float64) / 65535.0


dev, ref, gt_path, device = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
cpu = "cpu-ref" if device == "cpu" else "cpu"  # the dry run compares two CPU runs
runs = ((device, dev), (cpu, ref))
reports = {name: json.loads((p / "report.json").read_text()) for name, p in runs}
for name, r in reports.items():
    stages = ", ".join(f"{s['name']} {s['seconds']:.2f} s" for s in r["stages"])
    sec = r["seconds"]
    print(f"{name:>7}: read {sec['read']:.2f} s, {stages}, fit {sec['fit']:.2f} s, total {sec['total']:.2f} s, "
          f"peak RSS {r['peak_rss_mib']:.0f} MiB")
a = {name: read16(p / "allinfocus.png") for name, p in runs}
d = {name: np.load(p / "defocus.npy").astype(np.float64) for name, p in runs}
x, y = a[device], a[cpu]
print(f"allinfocus {device} vs {cpu}: PSNR {psnr(np.clip(x, 0, 1), np.clip(y, 0, 1)):.2f} dB, max |diff| {np.abs(x - y).max():.2e}, "
      f"mean |diff| {np.abs(x - y).mean():.2e}")
dd = np.abs(d[device] - d[cpu])
print(f"defocus {device} vs {cpu}: max |diff| {dd.max():.3f} px, mean |diff| {dd.mean():.4f} px "
      f"(range {d[cpu].min():.2f} .. {d[cpu].max():.2f} px)")
if gt_path.is_file():
    gt = read16(gt_path)
    h, w = x.shape
    oy, ox = (gt.shape[0] - h) // 2, (gt.shape[1] - w) // 2
    gt = gt[oy:oy + h, ox:ox + w]
    for name, img in a.items():
        s = evaluate(img, gt).registered
        print(f"ground truth, {name}: registered PSNR {s.psnr:.3f} dB, SSIM {s.ssim:.4f}")
PYEOF

echo "== export of the $DEVICE fit (ONNX Runtime verification, CPU)"
EXP="$OUT/export"
"${EDGEDP[@]}" export "$OUT/fit_$DEVICE" -o "$EXP" --overwrite
echo "== FP16 emulation of every graph"
"${EDGEDP[@]}" verify "$EXP" --half

echo "== edgedp-runtime (ONNX Runtime, CPU)"
R="$OUT/runtime"
"${RUNTIME[@]}" render "$EXP" -o "$R" --provider cpu --repeat 3 --overwrite
"${RUNTIME[@]}" refocus "$EXP" -o "$R" --provider cpu --sweep 3 --overwrite
"${RUNTIME[@]}" predict "$EXP" "$DATA/${SCENE}_left.png" "$DATA/${SCENE}_right.png" -o "$R" --provider cpu \
  --black-level 1024 --white-level 15359 --repeat 2 --overwrite
echo "== done: $OUT"
