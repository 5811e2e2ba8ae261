#!/usr/bin/env bash
# Set up (tools/setup.sh with the test extras: dev, export, and cluster for the Ray backend of
# `edgedp batch`) and run the whole test suite, slow tests included.
# Extra arguments go to pytest, e.g. `bash tools/test.sh -m "not slow"` for the quick subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh dev,export,cluster
exec .venv/bin/python -m pytest -q "$@"
