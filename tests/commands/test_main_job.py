"""The README's main job: one command generates an hour of multimodal traffic at 20 req/s from a
shipped checkpoint, exported for vLLM's timed-trace benchmark (Mooncake JSONL).

The command is taken verbatim from README.md, run as a separate process from the repository root, with only the output
path moved into a temporary directory.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = (REPO / "README.md",)
MAIN_JOB = (
    "servegen-ml generate checkpoint=checkpoints/multimodal/parametric "
    "duration_s=3600 rate=20 format=mooncake plot=true out=workload.jsonl"
)


def documented() -> str:
    for doc in DOCS:
        if doc.is_file() and MAIN_JOB in doc.read_text():
            return MAIN_JOB
    raise AssertionError(f"the main-job command is in none of {[str(d) for d in DOCS]}: {MAIN_JOB}")


@pytest.fixture(scope="module")
def workload(tmp_path_factory) -> Path:
    argv = shlex.split(documented())
    out = tmp_path_factory.mktemp("main-job") / "workload.jsonl"
    # The same code as the console script, with this interpreter; only the output path moves.
    argv = [sys.executable, "-m", "servegen_ml.cli", *argv[1:-1], f"out={out}"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    return out


def test_main_job_writes_an_hour_at_20_requests_per_second(workload):
    rows = pd.read_json(workload, lines=True)
    assert list(rows.columns[:4]) == ["timestamp", "input_length", "output_length", "hash_ids"]
    assert len(rows) / 3600 == pytest.approx(20.0, rel=0.15)
    ts = rows["timestamp"].to_numpy()
    assert rows["timestamp"].dtype == np.int64 and ts[0] == 0 and (np.diff(ts) >= 0).all()
    assert ts[-1] < 3_600_000  # int milliseconds within the hour
    assert (rows["input_length"] > 0).all() and (rows["output_length"] >= 0).all()
    blocks = rows["hash_ids"].map(len).to_numpy()
    assert (blocks == [math.ceil(n / 512) for n in rows["input_length"]]).all()


def test_main_job_writes_its_sidecar_and_figure(workload):
    meta = json.loads(workload.with_name("workload.jsonl.meta.json").read_text())
    assert meta["format"] == "mooncake" and meta["rows"] == sum(1 for _ in workload.open())
    assert meta["spec"]["duration_s"] == 3600 and meta["spec"]["rate"] == "20" and meta["seed"] == 0
    assert meta["checkpoint"] == "checkpoints/multimodal/parametric" and len(meta["checkpoint_digest"]) == 64
    assert meta["units"]["timestamp"].startswith("ms")
    png = workload.with_name("workload.jsonl.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
