"""ClientPool files, the ServeGen pool reader (with its cache) and pool sampling."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
import pytest

from servegen_ml.core.spec import GenerationSpec
from servegen_ml.pool import ClientPool, load_servegen_pool, sample_pool, sample_servegen_pool, servegen
from servegen_ml.trace.schema import list_lengths, list_values

TRACE_ROWS = [
    "0,0.5,1.2,Gamma,0.7,2.8",
    "600,0,0,,0,0",
    "1200,2.0,2.5,Weibull,0.5,0.25",
    "1800,1.0,1.0,Gamma,1.0,1.0",
    "2400,0,0,,0,0",
    "3000,0.2,1.0,Gamma,1.0,5.0",
]


def write_pool(directory, with_missing_client=True, dataset=None):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "chunk-0-trace.csv").write_text("\n".join(TRACE_ROWS) + "\n")
    dataset = dataset or {
        "0": {"input_tokens": "{10: 0.5, 20: 0.5}", "output_tokens": "{5: 0.25, 7: 0.75}"},
        "1200": {"input_tokens": "{}", "output_tokens": "{}"},
        "2400": {"input_tokens": "{30: 0.25, 40: 0.75}", "output_tokens": "{9: 1.0}"},
    }
    (directory / "chunk-0-dataset.json").write_text(json.dumps(dataset))
    if with_missing_client:
        (directory / "chunk-1-trace.csv").write_text("\n".join(TRACE_ROWS) + "\n")
    return directory


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(servegen.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_reads_rates_and_skips_clients_without_lengths(tmp_path, cache_dir):
    with pytest.warns(UserWarning, match="skipped 1 clients"):
        pool = load_servegen_pool(write_pool(tmp_path / "p"))
    assert pool.clients == ("0",)
    assert any("1" in note for note in pool.notes)
    assert pool.rate_window_s == 600 and pool.data_window_s == 1200 and pool.span_s == 3600
    assert pool.rates["window_start_s"].tolist() == [0, 1200, 1800, 3000]
    assert pool.rates["family"].astype(str).tolist() == ["Gamma", "Weibull", "Gamma", "Gamma"]
    assert pool.fields == ("input_tokens", "output_tokens")


def test_empty_window_falls_back_to_the_whole_trace_mixture(tmp_path, cache_dir):
    pool = load_servegen_pool(write_pool(tmp_path / "p", with_missing_client=False))
    table = pool.field_table("input_tokens")
    n = 40_000
    # Window 1200 is "{}": it draws from both windows weighted by their request counts (2 and 4).
    group = table.resolve(np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64))
    values = table.sample(group, np.random.default_rng(0))
    share = {v: np.mean(values == v) for v in (10, 20, 30, 40)}
    expected = {10: 1 / 6, 20: 1 / 6, 30: 1 / 6, 40: 0.5}
    for v, p in expected.items():
        assert share[v] == pytest.approx(p, abs=0.01)


def test_cache_is_reused_and_invalidated_by_changes(tmp_path, cache_dir, monkeypatch):
    directory = write_pool(tmp_path / "p", with_missing_client=False)
    first = load_servegen_pool(directory)
    assert any(cache_dir.rglob("pool.json"))

    def fail(*a, **k):
        raise AssertionError("parsed again instead of using the cache")

    monkeypatch.setattr(servegen, "parse_servegen_pool", fail)
    second = load_servegen_pool(directory)
    pd.testing.assert_frame_equal(
        second.rates.astype({"client_id": str, "family": str}),
        first.rates.astype({"client_id": str, "family": str}),
    )
    csv = directory / "chunk-0-trace.csv"
    csv.write_text(csv.read_text() + "3600,0,0,,0,0\n")
    with pytest.raises(AssertionError, match="parsed again"):
        load_servegen_pool(directory)


def test_malformed_inputs_name_the_file_and_place(tmp_path, cache_dir):
    bad = {"0": {"input_tokens": "{10: 0.5, 20: oops}", "output_tokens": "{5: 1.0}"}}
    with pytest.raises(ValueError, match=r"chunk-0-dataset\.json, window 0, field input_tokens"):
        load_servegen_pool(write_pool(tmp_path / "a", with_missing_client=False, dataset=bad))
    directory = write_pool(tmp_path / "b", with_missing_client=False)
    (directory / "chunk-0-trace.csv").write_text("0,1.0,1.0,Gamma,1.0,1.0\n600,1.0,1.0,Lognormal,1.0,1.0\n")
    with pytest.raises(ValueError, match=r"chunk-0-trace\.csv, line 2"):
        load_servegen_pool(directory)
    with pytest.raises(FileNotFoundError, match="not a ServeGen client pool"):
        load_servegen_pool(tmp_path)


def test_save_load_round_trip(tmp_path, cache_dir):
    pool = load_servegen_pool(write_pool(tmp_path / "p", with_missing_client=False))
    pool.save(tmp_path / "saved")
    loaded = ClientPool.load(tmp_path / "saved")
    assert loaded.clients == pool.clients and loaded.span_s == pool.span_s
    spec = GenerationSpec.from_values(duration_s=3600.0)
    pd.testing.assert_frame_equal(
        sample_pool(loaded, spec, np.random.default_rng(0)), sample_pool(pool, spec, np.random.default_rng(0))
    )
    meta = json.loads((tmp_path / "saved" / "pool.json").read_text())
    assert meta["clients"] == ["0"] and meta["rate_window_s"] == 600


def test_sampling_follows_windows_and_time_wraps(tmp_path, cache_dir):
    pool = load_servegen_pool(write_pool(tmp_path / "p", with_missing_client=False))
    # Start at 1200 s in the second pass of the learned span (wraps by the 3600 s span).
    out = sample_pool(
        pool, GenerationSpec.from_values(duration_s=1200.0, start_s=3600.0 + 1200.0), np.random.default_rng(3)
    )
    first_window = out[out["timestamp"] < 600]
    assert len(first_window) == pytest.approx(1200, rel=0.35)  # rate 2/s, bursty Weibull
    assert set(first_window["input_tokens"]) <= {10, 20, 30, 40}
    # Data window 1200 is empty: it uses the whole-trace mixture, so both windows' outputs appear.
    assert {5, 7, 9} <= set(out["output_tokens"])


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    old = os.environ.get(servegen.CACHE_ENV)
    os.environ[servegen.CACHE_ENV] = str(tmp_path_factory.mktemp("pool-cache"))
    yield
    if old is None:
        os.environ.pop(servegen.CACHE_ENV)
    else:
        os.environ[servegen.CACHE_ENV] = old


def test_deepseek_r1_counts_match_the_pool(shared_traces, shared_cache):
    directory = shared_traces / "servegen" / "reason" / "deepseek-r1"
    out = sample_servegen_pool(directory, 36_000.0, 3600.0, np.random.default_rng(0))
    pool = load_servegen_pool(directory)
    r = pool.rates[(pool.rates["window_start_s"] >= 36_000) & (pool.rates["window_start_s"] < 39_600)]
    expected = r["rate"].to_numpy() * 600
    # Renewal counts: Var N ~ CV^2 * E N per window.
    sd = np.sqrt(np.sum(r["cv"].to_numpy() ** 2 * expected))
    assert abs(len(out) - expected.sum()) < 4 * sd
    per_client = out["client_id"].value_counts()
    exp_client = pd.Series(expected, index=r["client_id"].astype(str).to_numpy()).groupby(level=0).sum()
    top = exp_client.sort_values().index[-1]
    assert per_client[top] == pytest.approx(exp_client[top], rel=0.25)
    reasoning, output = out["reasoning_tokens"].to_numpy(), out["output_tokens"].to_numpy()
    assert (reasoning <= output).all() and (reasoning > 0).mean() > 0.9


def test_mm_image_gives_item_lists(shared_traces, shared_cache):
    out = sample_servegen_pool(
        shared_traces / "servegen" / "multimodal" / "mm-image", 0.0, 600.0, np.random.default_rng(0)
    )
    assert "image_tokens" in out.columns and "audio_tokens" not in out.columns
    counts = list_lengths(out["image_tokens"])
    assert counts.max() >= 2
    owner = np.repeat(np.arange(len(out)), counts)
    item_sum = np.bincount(owner, weights=list_values(out["image_tokens"]), minlength=len(out))
    np.testing.assert_array_equal(out["input_tokens"], out["text_tokens"] + item_sum)


@pytest.mark.slow
def test_m_large_cached_load_is_fast(shared_traces, shared_cache):
    directory = shared_traces / "servegen" / "language" / "m-large"
    with pytest.warns(UserWarning, match="skipped 15 clients"):
        load_servegen_pool(directory)
    # CPU time: wall time on a shared 2-core machine measures the neighbours too.
    started = time.process_time()
    pool = load_servegen_pool(directory)
    for name in pool.fields:
        pool.field_table(name)
    assert time.process_time() - started < 2.0
    assert pool.n_clients == 147


def test_smoothed_distributions_are_normalized():
    from servegen_ml.pool.empirical import build_field_table, log_discretized_lognormal

    v = np.arange(200_000)
    for mu, sigma in [(3.0, 0.5), (6.0, 1.0), (0.2, 0.25)]:
        total = np.exp(log_discretized_lognormal(v, np.full(len(v), mu), np.full(len(v), sigma))).sum()
        assert total == pytest.approx(1.0, abs=1e-9)
    # One client, one window of ratios seen 10 times each (plus the whole-trace group).
    ratio = np.array([0.0, 0.25, 0.5, 0.9, 1.0])
    table = build_field_table(
        np.zeros(10, dtype=np.int64),
        np.repeat([0, 1], 5),
        np.tile(ratio, 2),
        np.full(10, 10.0),
        1,
        2,
        ratio=True,
    )
    for output in (1, 7, 3000):
        r = np.arange(output + 1)
        g = np.zeros(len(r), dtype=np.int64)
        p = np.exp(table.log_pmf_reasoning(g, g, r, np.full(len(r), output)))
        assert p.sum() == pytest.approx(1.0, abs=1e-9)
        assert p[0] > 0.18 and p[-1] > 0.18  # the point masses at ratio 0 and 1 survive
