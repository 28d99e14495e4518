"""Normalizers from the training part: per-client log-gap stats, spikes, rate curves."""

import numpy as np

from servegen_ml.neural.data.events import store_from_frame
from servegen_ml.neural.data.normalizers import SHRINK_GAPS, activity_table, fit_normalizers, rate_curves
from servegen_ml.trace.schema import make_trace
from tests.factories import synthetic_trace


def test_gap_stats_match_direct_computation_with_shrinkage():
    trace = synthetic_trace(seed=2, duration_s=1800.0, n_clients=3)
    store = store_from_frame(trace)
    split = 1200.0
    norm = fit_normalizers(store, split)
    all_logs = []
    per_client = []
    for cid in store.client_ids:
        t = trace.loc[(trace["client_id"] == cid) & (trace["timestamp"] < split), "timestamp"].to_numpy()
        g = np.diff(t)
        per_client.append(np.log(g[g > 0]))
        all_logs.append(per_client[-1])
    pooled = np.concatenate(all_logs)
    for c, logs in enumerate(per_client):
        want = (logs.sum() + SHRINK_GAPS * pooled.mean()) / (len(logs) + SHRINK_GAPS)
        assert abs(norm.gap_log_mean[c] - want) < 1e-4
    assert norm.train_events.sum() == (trace["timestamp"] < split).sum()


def test_spikes_are_frequent_exact_values():
    rng = np.random.default_rng(0)
    n = 20_000
    out = np.round(np.exp(rng.normal(6.0, 0.8, n))).astype(int)  # smooth: no value holds 0.5 %
    out[rng.random(n) < 0.1] = 2000  # a cap
    inp = np.round(np.exp(rng.normal(7.0, 0.5, n))).astype(int)
    inp[rng.random(n) < 0.05] = 1234  # a template
    inp[rng.random(n) < 0.02] = 77
    trace = make_trace(
        {
            "timestamp": np.sort(rng.random(n)) * 1000,
            "client_id": np.full(n, "a"),
            "input_tokens": inp,
            "output_tokens": out,
        }
    )
    norm = fit_normalizers(store_from_frame(trace), 1e9, max_spikes=32, min_spike_share=0.005)
    assert norm.spikes["output"] == [2000]
    assert norm.spikes["input"] == [77, 1234]
    assert fit_normalizers(store_from_frame(trace), 1e9, max_spikes=1, min_spike_share=0.005).spikes[
        "input"
    ] == [1234]
    assert norm.max_count["output"] == out.max()


def test_rate_curves_count_events_per_bin():
    trace = synthetic_trace(seed=4, duration_s=1200.0, n_clients=2)
    store = store_from_frame(trace)
    curves = rate_curves(store, 600.0, 1200.0)
    for c, cid in enumerate(store.client_ids):
        t = trace.loc[trace["client_id"] == cid, "timestamp"].to_numpy()
        np.testing.assert_allclose(curves[c], [np.sum(t < 600) / 600, np.sum(t >= 600) / 600], rtol=1e-6)


def test_rate_curves_until_split_and_activity_table():
    trace = synthetic_trace(seed=4, duration_s=1200.0, n_clients=2)
    store = store_from_frame(trace)
    early = rate_curves(store, 600.0, 1200.0, until_s=600.0)
    full = rate_curves(store, 600.0, 1200.0)
    np.testing.assert_allclose(early[:, 0], full[:, 0])
    assert (early[:, 1] == 0).all() and (full[:, 1] > 0).all()
    table, mean, std = activity_table(full, 1200.0)
    np.testing.assert_allclose(table * std + mean, np.log(full + 1 / 1200.0), rtol=1e-5)
