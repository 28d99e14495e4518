#!/usr/bin/env bash
# Installs servegen-ml (editable) with its test extras.
# torch: an already installed build (e.g. your CUDA one) is kept; otherwise the
# pinned CPU build is installed first, so pip does not pull a multi-GB CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[dev]"
