"""DDP training on 2 CPU processes (gloo) through the train command; the checkpoint loads and samples."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.base import load_generator
from servegen_ml.trace.io import write_trace
from tests.factories import synthetic_trace

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_two_cpu_processes_write_a_loadable_checkpoint(tmp_path):
    data = tmp_path / "trace.parquet"
    write_trace(synthetic_trace(seed=0, duration_s=1800.0, n_clients=4, reasoning=True), data)
    out = tmp_path / "ck"
    cmd = [
        sys.executable, "-m", "servegen_ml.cli", "train", f"data.path={data}", "model=neural", "trainer=ddp_cpu",
        f"out={out}", "trainer.max_epochs=2", "trainer.default_root_dir=null", "model.hidden=16", "model.embedding=4",
        "model.head_hidden=16", "model.chunk_len=32", "model.lanes=8",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    gen = load_generator(out)
    assert gen.state_.training["world_size"] == 2
    assert json.loads((out / "manifest.json").read_text())["config"]["trainer"]["strategy"] == "ddp"
    sample = gen.sample(GenerationSpec.from_values(duration_s=300.0), np.random.default_rng(0))
    assert len(sample) > 50
