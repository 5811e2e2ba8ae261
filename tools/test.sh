#!/usr/bin/env bash
# Set up (tools/setup.sh with the test extras) and run the whole test suite, slow tests included.
# Extra arguments go to pytest, e.g. `bash tools/test.sh -m "not slow"` for the quick subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh dev,export
exec .venv/bin/python -m pytest -q "$@"
