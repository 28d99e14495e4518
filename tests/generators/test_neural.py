"""The neural generator beyond the contract: checkpoint files, rate control, likelihood details, training runs."""

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from servegen_ml import pool
from servegen_ml.core.config import compose
from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.base import load_generator
from servegen_ml.generators.neural import NeuralGenerator
from servegen_ml.generators.training import fit_from_config
from servegen_ml.trace.io import read_trace, write_trace
from tests.factories import conversational_trace, synthetic_trace

TINY = {
    "hidden": 16,
    "embedding": 4,
    "head_hidden": 16,
    "time_components": 3,
    "mark_components": 3,
    "chunk_len": 32,
    "lanes": 16,
}
FAST = {"accelerator": "cpu", "devices": 1, "max_epochs": 3, "default_root_dir": None, "num_threads": 1}


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace(seed=1, duration_s=2400.0, n_clients=3, reasoning=True)


@pytest.fixture(scope="module")
def fitted(trace):
    return NeuralGenerator(**TINY, trainer=FAST).fit(trace)


def test_checkpoint_is_readable_loads_fast_and_without_torch(fitted, tmp_path):
    ck = fitted.save(tmp_path / "ck")
    names = {p.name for p in ck.iterdir()}
    assert names == {"manifest.json", "model.safetensors", "clients.safetensors", "neural.json"}
    meta = json.loads((ck / "neural.json").read_text())
    assert meta["client_ids"] == ["c0", "c1", "c2"]
    assert set(meta["normalizers"]) == {"mark_mean", "mark_std", "spikes", "max_count"}
    weights = load_file(str(ck / "model.safetensors"))
    for k, v in weights.items():
        np.testing.assert_array_equal(v, fitted.state_.weights[k])
    t0 = time.perf_counter()
    loaded = load_generator(ck)
    assert time.perf_counter() - t0 < 2.0
    assert loaded.config() == fitted.config()
    code = (
        "import sys; from servegen_ml.generators.base import load_generator; import numpy as np;"
        "from servegen_ml.core.spec import GenerationSpec;"
        f"g = load_generator({str(ck)!r}); g.sample(GenerationSpec(duration_s=60.0), np.random.default_rng(0));"
        "assert 'torch' not in sys.modules, 'loading and sampling imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rate_control_scales_counts_and_keeps_burstiness(fitted):
    base = GenerationSpec.from_values(duration_s=1200.0, start_s=600.0)
    natural = fitted.sample(base, np.random.default_rng(0))
    tripled = fitted.sample(
        GenerationSpec.from_values(duration_s=1200.0, start_s=600.0, rate="scale:3"), np.random.default_rng(0)
    )
    assert 2.3 < len(tripled) / len(natural) < 3.7
    # Burstiness kept: log gaps shift by log 3, their spread stays (the CV itself is too noisy to compare).
    for cid in ("c0", "c1"):
        logs = [
            np.log(np.diff(tr.loc[tr.client_id == cid, "timestamp"].to_numpy()) + 1e-6)
            for tr in (natural, tripled)
        ]
        q = [np.quantile(x, [0.25, 0.5, 0.75]) for x in logs]
        assert abs((q[0][1] - q[1][1]) - np.log(3.0)) < 0.35
        assert abs((q[1][2] - q[1][0]) / (q[0][2] - q[0][0]) - 1.0) < 0.25
    const = fitted.sample(
        GenerationSpec.from_values(duration_s=1200.0, start_s=600.0, rate=10), np.random.default_rng(0)
    )
    assert 0.6 < len(const) / 12000 < 1.4


def test_new_clients_get_new_ids_and_unknown_ids_are_refused(fitted):
    out = fitted.sample(
        GenerationSpec.from_values(duration_s=600.0, clients="new:4", rate=5), np.random.default_rng(0)
    )
    assert set(out["client_id"].unique()) <= {f"new-{i}" for i in range(4)} and len(out) > 500
    with pytest.raises(ValueError, match="unknown client"):
        fitted.sample(GenerationSpec.from_values(duration_s=60.0, clients="nope"), np.random.default_rng(0))


def test_survival_term_sits_on_each_clients_last_event(fitted, trace):
    head = trace.iloc[:400].reset_index(drop=True)
    short = fitted.log_prob(head)
    longer = fitted.log_prob(head, window_end_s=float(head["timestamp"].max()) + 600.0)
    last = head.groupby("client_id").tail(1).index
    others = head.index.difference(last)
    np.testing.assert_allclose(short.loc[others, "time"], longer.loc[others, "time"])
    assert (longer.loc[last, "time"] < short.loc[last, "time"]).all()
    np.testing.assert_allclose(short.drop(columns=["time", "total"]), longer.drop(columns=["time", "total"]))


def test_a_time_past_the_learned_span_scores_as_the_same_phase_inside_it(fitted, trace):
    # The sampler reads the features of a later time at its phase inside the span (wrap_time), so
    # the likelihood must too: a held-out hour is scored under what the generator samples there.
    head = trace[trace["timestamp"] < trace["timestamp"].min() + 600.0].reset_index(drop=True)
    # Whole microseconds: no gap is so short that adding the span would round it to zero.
    head["timestamp"] = head["timestamp"].round(6)
    later = head.assign(timestamp=head["timestamp"] + fitted.state_.span_s)
    np.testing.assert_allclose(fitted.log_prob(later).to_numpy(), fitted.log_prob(head).to_numpy(), rtol=1e-6)


def test_unknown_clients_score_as_the_mean_client(fitted, trace):
    renamed = trace.iloc[:300].copy()
    renamed["client_id"] = renamed["client_id"].astype(str).str.replace("c0", "stranger")
    lp = fitted.log_prob(renamed.reset_index(drop=True))
    assert np.isfinite(lp.to_numpy()).all()
    # The mean client with no head offsets: the heads' shared part (started at the pooled marginals).
    state = fitted.state_
    table = fitted._client_inputs(len(state.client_ids) + 2)
    np.testing.assert_array_equal(table.offsets[-2:], 0.0)
    np.testing.assert_allclose(table.embedding[-1], state.client_vectors()[:, : state.embedding_dim].mean(0))
    np.testing.assert_array_equal(table.offsets[:-2], state.weights["heads.client_offsets.weight"])


def test_streamed_fit_from_parquet_resumes_from_last_checkpoint(trace, tmp_path):
    path = tmp_path / "trace.parquet"
    write_trace(trace, path)
    trainer = {**FAST, "max_epochs": 1, "default_root_dir": str(tmp_path / "runs")}
    first = NeuralGenerator(**TINY, trainer=trainer).fit(path)
    assert first.clients == ("c0", "c1", "c2") and first.state_.training["resumed_from"] is None
    (log,) = list((tmp_path / "runs").glob("*/logs/*/metrics.csv"))  # CSV logs by default
    # Every run draws its learning curve next to its CSV log.
    assert first.state_.training["learning_curve"] == str(log.parent / "learning_curve.png")
    assert (log.parent / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    second = NeuralGenerator(**TINY, trainer={**trainer, "max_epochs": 2}).fit(path)
    assert second.state_.training["resumed_from"].endswith("last.ckpt")
    assert second.state_.training["epochs"] == 2


def test_streamed_fit_learns_conversations_like_the_in_memory_fit(tmp_path):
    # Several chunks: conversations run across chunk borders, openers are picked from the whole file.
    path = tmp_path / "conversations.parquet"
    write_trace(conversational_trace(seed=0, duration_s=1800.0), path)
    trace = read_trace(path)
    settings = {**TINY, "trainer": {**FAST, "max_epochs": 1}}
    streamed = NeuralGenerator(**settings).fit(path, chunk_rows=97)
    whole = NeuralGenerator(**settings).fit(trace)
    assert streamed.conversations_ is not None and streamed.rows_fitted_ == len(trace)
    assert streamed.state_.training["train_events"] + streamed.state_.training["val_events"] < len(trace)
    for a, b in (
        (streamed.state_.weights, whole.state_.weights),
        (streamed.conversations_.weights, whole.conversations_.weights),
    ):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_train_command_streams_a_conversational_trace(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    trace = conversational_trace(seed=1, duration_s=1800.0)
    write_trace(trace, path)

    def whole_trace_read(*args, **kwargs):
        raise AssertionError("train read the whole trace into memory")

    monkeypatch.setattr(pool, "read_source", whole_trace_read)
    overrides = ["+experiment=neural_small", "trainer.max_epochs=1", "chunk_rows=101", "quiet=true"]
    cfg = compose("train", [f"data.path={path}", f"out={tmp_path / 'ck'}", *overrides])
    metrics = fit_from_config(cfg)
    assert metrics["train_events"] == len(trace)
    gen = load_generator(tmp_path / "ck")
    assert gen.conversations_ is not None
    sample = gen.sample(GenerationSpec.from_values(duration_s=1800.0), np.random.default_rng(0))
    assert sample["conversation_id"].duplicated().any()  # follow-up turns


def test_train_command_sorts_a_trace_unsorted_across_chunks_in_memory(tmp_path):
    trace = synthetic_trace(seed=2, duration_s=900.0, n_clients=2)
    path = tmp_path / "t.csv"
    half = len(trace) // 2
    write_trace(pd.concat([trace.iloc[half:], trace.iloc[:half]], ignore_index=True), path)
    overrides = ["+experiment=neural_small", "trainer.max_epochs=1", f"chunk_rows={half}", "quiet=true"]
    cfg = compose("train", [f"data.path={path}", f"out={tmp_path / 'ck'}", *overrides])
    with pytest.warns(UserWarning, match="read into memory for training: trace is not sorted"):
        metrics = fit_from_config(cfg)
    assert metrics["train_events"] == len(trace)


def test_a_trace_stamped_in_slots_is_generated_in_the_same_slots(trace, tmp_path):
    # A log that stamps times in 2 s slots: the fitted generator writes its output in 2 s slots
    # too (from the spec's start), and keeps the quantum through save and load.
    slotted = trace.assign(timestamp=np.floor(trace["timestamp"] / 2.0) * 2.0)
    gen = NeuralGenerator(**TINY, trainer={**FAST, "max_epochs": 1}).fit(slotted)
    assert gen.state_.time_quantum_s == 2.0
    gen.save(tmp_path / "ck")
    loaded = load_generator(tmp_path / "ck")
    assert loaded.state_.time_quantum_s == 2.0
    spec = GenerationSpec.from_values(duration_s=600.0, seed=0)
    t = loaded.sample(spec, np.random.default_rng(0))["timestamp"].to_numpy()
    assert len(t) > 50 and np.all(np.mod(t, 2.0) == 0.0)
    # Each event's time is scored as its slot: a probability, where a density at 1 ms bins of the
    # spread times would be another number.
    time_part = loaded.log_prob(slotted)["time"].to_numpy()
    assert np.isfinite(time_part).all() and (time_part <= 0).all()
    assert time_part.mean() > np.log(1e-3)


def test_a_continuous_trace_has_no_slots(fitted):
    assert fitted.state_.time_quantum_s == 0.0
    t = fitted.sample(GenerationSpec.from_values(duration_s=600.0, seed=0), np.random.default_rng(0))[
        "timestamp"
    ]
    assert np.mean(np.mod(t.to_numpy(), 1.0) == 0.0) < 0.01
