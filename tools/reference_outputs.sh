#!/usr/bin/env bash
# Reference outputs of a refactoring: run the same commands before and after, then compare them
# with tools/compare_outputs.py (arrays and PNGs exact, JSON without its timing / path fields).
#   bash tools/reference_outputs.sh OUTDIR
# Writes OUTDIR/sample (edgedp synth), OUTDIR/sample/fit (edgedp fit --preset fast),
# OUTDIR/export (edgedp export of that fit's scene) with OUTDIR/verify.txt (edgedp verify), and
# OUTDIR/pixel4 (a 336x448 crop of Pixel 4 scene 001, --preset fast) when the data is there.
# CPU only; EDGEDP (default: .venv/bin/edgedp, else edgedp on PATH) is the command under test.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: tools/reference_outputs.sh OUTDIR}
edgedp=${EDGEDP:-.venv/bin/edgedp}
[ -x "$edgedp" ] || edgedp=edgedp
data=${PIXEL4_DATA:-../shared/data/pixel4}
export CUDA_VISIBLE_DEVICES=""
mkdir -p "$out"
"$edgedp" synth -o "$out/sample" --overwrite > "$out/synth.txt"
"$edgedp" fit "$out/sample/left.png" "$out/sample/right.png" -o "$out/sample/fit" --preset fast --overwrite > "$out/fit.txt"
"$edgedp" export "$out/sample/fit/scene" -o "$out/export" --overwrite > "$out/export.txt"
"$edgedp" verify "$out/export" > "$out/verify.txt"
if [ -f "$data/001_left.png" ]; then
    "$edgedp" fit "$data/001_left.png" "$data/001_right.png" -o "$out/pixel4" --camera pixel4 \
        --flat-field "$data/calibration/white_sheet_left.png" "$data/calibration/white_sheet_right.png" \
        --crop 336x448 --preset fast --overwrite > "$out/pixel4.txt"
else
    echo "no Pixel 4 data at $data: skipped its fit" >&2
fi
echo "reference outputs in $out"
