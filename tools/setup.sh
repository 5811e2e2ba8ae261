#!/usr/bin/env bash
# Set up edgedp in ./.venv on a fresh machine: bash tools/setup.sh [EXTRAS]
#   EXTRAS: comma-separated pip extras, e.g. "dev,export" (default: none).
# PyTorch: when the venv has no torch yet, install the CPU build 2.13.0 that this kind of machine
# keeps on disk (pip finds it there); an unpinned torch would download a multi-GB CUDA build.
# Set EDGEDP_TORCH to another requirement (e.g. "torch==2.5.1") to override.
# Two packages: the device runtime (./export, edgedp-runtime: numpy only, no torch) first, then
# edgedp itself, which imports the runtime's export schema (edgedp_runtime.schema).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
extras=${1:-}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    pip install "${EDGEDP_TORCH:-torch==2.13.0}"
fi
pip install -e ./export
if [ -n "$extras" ]; then
    pip install -e ".[${extras}]"
else
    pip install -e .
fi
