#!/usr/bin/env bash
# Side environment for the replay tests (pytest -m replay; docs/replay.md):
# AIPerf, GuideLLM and vLLM's `bench serve` in their own virtual environment,
# plus an offline tokenizer, so nothing touches the project's own environment
# and nothing is downloaded at test time. Idempotent; about 3 GB on disk.
#   SERVEGEN_REPLAY_ENV  where the environment goes (default: .replay-env, git-ignored)
#   REPLAY_SKIP_VLLM=1   do not try vLLM (its replay tests then skip)
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_DIR="${SERVEGEN_REPLAY_ENV:-$PWD/.replay-env}"
PY="${PYTHON:-python3}"
AIPERF_VERSION=0.13.0
GUIDELLM_VERSION=0.8.1
VLLM_VERSION=0.34.0

[ -x "$ENV_DIR/bin/python" ] || "$PY" -m venv "$ENV_DIR"
VPY="$ENV_DIR/bin/python"
pip_install() { "$VPY" -m pip install --quiet --disable-pip-version-check "$@"; }

# GuideLLM and vLLM import torch: put the CPU build in first (as scripts/install.sh
# does), or pip resolves the multi-GB CUDA one.
"$VPY" -c "import torch" >/dev/null 2>&1 || pip_install "torch==2.13.0"
pip_install "aiperf==$AIPERF_VERSION" "guidellm==$GUIDELLM_VERSION"

# vLLM's full dependency set is CUDA-only; `bench serve` needs vllm itself plus
# the few pure-Python modules it imports. Time-boxed: on failure its tests skip.
rm -f "$ENV_DIR/vllm-bench.ok"
if [ "${REPLAY_SKIP_VLLM:-0}" != 1 ]; then
    if timeout 1200 "$VPY" -m pip install --quiet --disable-pip-version-check --no-deps \
        "vllm==$VLLM_VERSION" pybase64 cachetools openai httpx2 openai-harmony cbor2 cloudpickle \
        py-cpuinfo partial-json-parser "llguidance>=1.7,<1.8" "xgrammar==0.2.8" "apache-tvm-ffi==0.1.11" einops \
        && HF_HUB_OFFLINE=1 timeout 300 "$ENV_DIR/bin/vllm" bench serve --help >/dev/null 2>&1; then
        echo "vllm==$VLLM_VERSION" > "$ENV_DIR/vllm-bench.ok"
    else
        echo "replay_setup: vLLM bench serve could not be installed; its replay tests will skip" >&2
    fi
fi

"$VPY" tests/replay/build_tokenizer.py "$ENV_DIR/hf" >/dev/null
echo "replay environment ready: $ENV_DIR"
