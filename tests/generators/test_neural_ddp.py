"""DDP training on 2 CPU processes (gloo) through the train command: each rank builds only its clients'
shard of the streamed file; the checkpoint loads, samples and serves ``generate``; the same seed gives
the same weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.base import load_generator
from servegen_ml.trace.io import read_trace, write_trace
from tests.factories import synthetic_trace

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _train(data, out, cwd):
    cmd = [
        sys.executable, "-m", "servegen_ml.cli", "train", f"data.path={data}", "model=neural", "trainer=ddp_cpu",
        f"out={out}", "trainer.max_epochs=2", "trainer.default_root_dir=null", "model.hidden=16", "model.embedding=4",
        "model.head_hidden=16", "model.chunk_len=32", "model.lanes=8", "chunk_rows=500",
    ]  # fmt: skip
    result = subprocess.run(cmd, check=False, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_on_shards_and_write_a_loadable_checkpoint(tmp_path):
    data = tmp_path / "trace.parquet"
    trace = synthetic_trace(seed=0, duration_s=1800.0, n_clients=4, reasoning=True)
    write_trace(trace, data)
    out = tmp_path / "ck"
    _train(data, out, tmp_path)
    gen = load_generator(out)
    training = gen.state_.training
    assert training["world_size"] == 2
    # Each rank held its own clients' events only: neither shard is the whole trace, together they are.
    shards = training["shard_events"]
    assert len(shards) == 2 and sum(shards) == len(trace) and 0 < min(shards) and max(shards) < len(trace)
    assert training["train_events"] + training["val_events"] == len(trace)
    assert json.loads((out / "manifest.json").read_text())["config"]["trainer"]["strategy"] == "ddp"
    sample = gen.sample(GenerationSpec.from_values(duration_s=300.0), np.random.default_rng(0))
    assert len(sample) > 50
    workload = tmp_path / "workload.parquet"
    cmd = [
        sys.executable,
        "-m",
        "servegen_ml.cli",
        "generate",
        f"checkpoint={out}",
        "duration_s=300",
        f"out={workload}",
    ]
    generated = subprocess.run(
        cmd, check=False, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert len(read_trace(workload)) > 50
    again = tmp_path / "again"
    _train(data, again, tmp_path)
    for k, v in gen.state_.weights.items():
        np.testing.assert_array_equal(
            np.asarray(v), np.asarray(load_generator(again).state_.weights[k]), err_msg=k
        )
