#!/usr/bin/env bash
# The replay tests: set up the side environment, then replay exports through
# AIPerf, GuideLLM and vLLM bench against a local mock server (about 25 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/replay_setup.sh
python3 -m pytest -m replay tests/replay "$@"
