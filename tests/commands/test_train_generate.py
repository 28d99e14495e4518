"""End to end: `servegen-ml train` then `servegen-ml generate` (in process), and the train/ entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from servegen_ml.cli import main
from servegen_ml.generators.base import checkpoint_digest
from servegen_ml.pool import sample_servegen_pool
from servegen_ml.trace.io import read_trace
from servegen_ml.trace.writers import write_trace
from tests.factories import synthetic_trace

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "small.parquet"
    write_trace(
        synthetic_trace(seed=0, duration_s=1800.0, n_clients=3, multimodal=True, reasoning=True), path
    )
    return path


def train(data, out, *extra) -> int:
    return main(["train", f"data.path={data}", f"out={out}", *extra])


def generate(checkpoint, out, *extra, duration_s=300) -> pd.DataFrame:
    assert (
        main(["generate", f"checkpoint={checkpoint}", f"duration_s={duration_s}", f"out={out}", *extra]) == 0
    )
    return read_trace(out)


@pytest.fixture(scope="module")
def parametric_ck(small_trace, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ck") / "parametric"
    assert train(small_trace, out, "model=parametric", "split=0.67") == 0
    return out


def test_train_writes_checkpoint_and_held_out_metrics(parametric_ck, capsys):
    manifest = json.loads((parametric_ck / "manifest.json").read_text())
    assert manifest["generator"] == "parametric" and manifest["config"]["rate_window_s"] == 600
    metrics = json.loads((parametric_ck / "metrics.json").read_text())
    held = metrics["held_out"]
    assert metrics["held_out_events"] > 1000 and held["events"] == metrics["held_out_events"]
    for part in ("nll_time", "nll_input_tokens", "nll_output_tokens", "nll_reasoning_tokens", "nll_total"):
        assert np.isfinite(held[part]) and held[part] > 0


def test_generate_is_byte_identical_for_the_same_seed(parametric_ck, tmp_path):
    a = generate(parametric_ck, tmp_path / "a.parquet", "seed=3")
    generate(parametric_ck, tmp_path / "b.parquet", "seed=3")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    c = generate(parametric_ck, tmp_path / "c.parquet", "seed=4")
    assert not a.equals(c)
    meta = json.loads((tmp_path / "a.parquet.meta.json").read_text())
    assert meta["seed"] == 3 and meta["spec"]["duration_s"] == 300
    assert meta["checkpoint_digest"] == checkpoint_digest(parametric_ck)
    assert meta["package_version"] and meta["units"]["timestamp"] == "s"
    assert {"image_tokens", "reasoning_tokens", "text_tokens"} <= set(a.columns)


def test_rate_and_client_options(parametric_ck, tmp_path):
    natural = len(generate(parametric_ck, tmp_path / "n.parquet", duration_s=600))
    doubled = len(generate(parametric_ck, tmp_path / "s.parquet", "rate=scale:2", duration_s=600))
    assert doubled / natural == pytest.approx(2.0, rel=0.25)
    constant = generate(parametric_ck, tmp_path / "k.jsonl", "rate=20", duration_s=600)
    assert len(constant) / 600 == pytest.approx(20, rel=0.2)
    ramp = generate(parametric_ck, tmp_path / "r.parquet", "rate='curve:0=2,600=30'", duration_s=600)
    ts = ramp["timestamp"].to_numpy()
    assert np.sum(ts >= 300) > 2 * np.sum(ts < 300)
    new = generate(parametric_ck, tmp_path / "new.parquet", "clients=new:20")
    assert new["client_id"].str.startswith("new-").all() and new["client_id"].nunique() >= 10
    subset = generate(parametric_ck, tmp_path / "sub.parquet", "clients=[c0,c2]")
    assert set(subset["client_id"]) == {"c0", "c2"}


def test_naive_and_bad_input_exit_2(small_trace, tmp_path, capsys):
    assert train(small_trace, tmp_path / "naive", "model=naive", "model.arrival=gamma") == 0
    out = generate(tmp_path / "naive", tmp_path / "naive.parquet", "rate=scale:2")
    assert set(out["client_id"]) == {"all"}
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                f"checkpoint={tmp_path / 'naive'}",
                "duration_s=60",
                f"out={tmp_path / 'x.parquet'}",
                "clients=new:3",
            ]
        )
        == 2
    )
    assert "no clients" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()
    assert (
        main(
            [
                "generate",
                f"checkpoint={tmp_path / 'nothing'}",
                "duration_s=60",
                f"out={tmp_path / 'y.parquet'}",
            ]
        )
        == 2
    )
    assert train(small_trace, tmp_path / "bad", "split=1.5") == 2
    assert "split" in capsys.readouterr().err


def test_train_runs_as_its_own_process(small_trace, tmp_path):
    """The one entry point (the console script's module) trains from the command line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "servegen_ml.cli",
        "train",
        f"data.path={small_trace}",
        "model=naive",
        f"out={tmp_path / 'ck'}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "ck" / "manifest.json").read_text())["generator"] == "naive"


SHARED_VARIANTS = ("rate=scale:2", "rate=50", "rate='curve:0=10,300=40'", "clients=new:20")


def _train_and_generate_variants(data, tmp_path, *train_extra):
    assert train(data, tmp_path / "ck", "model=parametric", *train_extra) == 0
    sizes = {}
    for i, option in enumerate(SHARED_VARIANTS):
        out = generate(tmp_path / "ck", tmp_path / f"out{i}.parquet", option)
        assert len(out) > 0 and out["timestamp"].max() < 300
        sizes[option] = len(out)
    assert sizes["rate=50"] / 300 == pytest.approx(50, rel=0.3)
    return sizes


def test_mooncake_end_to_end(shared_traces, tmp_path):
    data = shared_traces / "mooncake-fast25" / "conversation_trace.jsonl"
    _train_and_generate_variants(data, tmp_path, "split=0.67")
    metrics = json.loads((tmp_path / "ck" / "metrics.json").read_text())
    assert np.isfinite(metrics["held_out"]["nll_total"])


def test_deepseek_r1_end_to_end(shared_traces, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVEGEN_ML_CACHE_DIR", str(tmp_path / "cache"))
    pool_dir = shared_traces / "servegen" / "reason" / "deepseek-r1"
    trace_path = tmp_path / "r1.parquet"
    write_trace(sample_servegen_pool(pool_dir, 36_000.0, 1800.0, np.random.default_rng(0)), trace_path)
    _train_and_generate_variants(trace_path, tmp_path / "fitted", "split=0.67")
    out = read_trace(tmp_path / "fitted" / "out0.parquet")
    assert (out["reasoning_tokens"] <= out["output_tokens"]).all() and out["reasoning_tokens"].gt(
        0
    ).mean() > 0.9
    # The pool directory itself loads as a ready-made parametric fit.
    _train_and_generate_variants(pool_dir, tmp_path / "pool")
    assert "ready-made" in json.loads((tmp_path / "pool" / "ck" / "metrics.json").read_text())["fit"]
