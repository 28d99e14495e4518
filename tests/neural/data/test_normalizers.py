"""Normalizers from the training part: per-client log-gap stats (in unit time), spikes, rate curves."""

import numpy as np

from servegen_ml.neural.data.events import store_from_frame
from servegen_ml.neural.data.normalizers import SHRINK_GAPS, activity_table, fit_normalizers, rate_curves
from servegen_ml.neural.data.validation import ValidationBlocks
from servegen_ml.neural.rate_level import fit_rate_level, unit_clock
from servegen_ml.trace.schema import make_trace
from tests.factories import synthetic_trace


def test_gap_stats_match_direct_computation_with_shrinkage():
    trace = synthetic_trace(seed=2, duration_s=1800.0, n_clients=3)
    store = store_from_frame(trace)
    blocks = ValidationBlocks.for_window(store.window_start_s, store.window_end_s, 0.25, block_s=150.0)
    clock = unit_clock(fit_rate_level(rate_curves(store, 300.0, 1800.0), 300.0, 1800.0), 300.0, 1800.0)
    norm = fit_normalizers(store, clock, blocks)
    train = ~blocks.is_validation(trace["timestamp"].to_numpy() - store.origin_s)
    all_logs = []
    per_client = []
    for c, cid in enumerate(store.client_ids):
        mine = (trace["client_id"] == cid).to_numpy()
        u = clock(np.full(mine.sum(), c), trace["timestamp"].to_numpy()[mine] - store.origin_s)
        g = np.diff(u)[train[mine][1:]]  # gaps ending at a training event
        per_client.append(np.log(g[g > 0]))
        all_logs.append(per_client[-1])
    pooled = np.concatenate(all_logs)
    for c, logs in enumerate(per_client):
        want = (logs.sum() + SHRINK_GAPS * pooled.mean()) / (len(logs) + SHRINK_GAPS)
        assert abs(norm.gap_log_mean[c] - want) < 1e-4
    assert norm.train_events.sum() == train.sum() < len(trace)


def seconds(client, t):  # a clock that counts seconds: the marks' statistics do not depend on it
    return t


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
    norm = fit_normalizers(store_from_frame(trace), seconds, None, max_spikes=32, min_spike_share=0.005)
    assert norm.spikes["output"] == [2000]
    assert norm.spikes["input"] == [77, 1234]
    assert fit_normalizers(
        store_from_frame(trace), seconds, None, max_spikes=1, min_spike_share=0.005
    ).spikes["input"] == [1234]
    assert norm.max_count["output"] == out.max()


def test_a_value_frequent_within_one_small_client_is_a_spike(monkeypatch):
    """Spikes are chosen by the larger of the overall and the within-client share, whatever the blocks."""
    from servegen_ml.neural.data import normalizers

    rng = np.random.default_rng(1)
    big, small = 50_000, 400
    inp = np.round(np.exp(rng.normal(7.0, 0.8, big + small))).astype(int)
    inp[:big][rng.random(big) < 0.02] = 1234  # the big client's template
    inp[big:][: small // 4] = 333  # a quarter of the small client's prompts: 0.2 % overall
    trace = make_trace(
        {
            "timestamp": np.sort(rng.random(big + small)) * 1000,
            "client_id": np.r_[np.full(big, "big"), np.full(small, "small")],
            "input_tokens": inp,
            "output_tokens": np.full(big + small, 10),
        }
    )
    store = store_from_frame(trace)
    wanted = fit_normalizers(store, seconds, None, max_spikes=2, min_spike_share=0.005).spikes["input"]
    assert wanted == [333, 1234]
    # Without the within-client share the small client's value is not frequent enough overall.
    hist = np.bincount(inp, minlength=2000)
    assert normalizers.frequent_values(hist, 2, 0.005) == [1234]
    for block in (977, 10_000):  # blocks that split clients: the counts carry across
        real = normalizers.iter_blocks
        monkeypatch.setattr(normalizers, "iter_blocks", lambda n, block=block, real=real: real(n, block))
        got = fit_normalizers(store, seconds, None, max_spikes=2, min_spike_share=0.005).spikes["input"]
        assert got == wanted


def test_frequent_reasoning_ratios_are_spikes_within_their_client(monkeypatch):
    """Reasoning spikes are frequent ratios on the grid, counted within clients across blocks;
    ratios 0 and 1 have their own masses and are not candidates."""
    from servegen_ml.neural.data import normalizers

    rng = np.random.default_rng(2)
    n = 6_000
    output = rng.integers(10_000, 30_000, n)  # totals >= the grid's 10,000: a ratio's key is exact
    ratio = rng.uniform(0.05, 0.95, n)  # smooth: no grid key holds 0.05 % within a client
    client = np.where(np.arange(n) < n // 2, "a", "b")
    ratio[:300] = 0.9501  # 10 % of client a's requests
    ratio[n // 2 : n // 2 + 40] = 0.25  # 1.3 % of client b's
    reasoning = np.floor(ratio * output + 0.5).astype(int)
    reasoning[n - 50 :] = output[n - 50 :]  # all-reasoning answers: ratio 1, not a spike
    trace = make_trace(
        {
            "timestamp": np.sort(rng.random(n)) * 1000,
            "client_id": client,
            "input_tokens": np.full(n, 10),
            "output_tokens": output,
            "reasoning_tokens": reasoning,
        }
    )
    store = store_from_frame(trace)
    want = [2500, 9501]
    assert (
        fit_normalizers(store, seconds, None, max_spikes=8, min_spike_share=0.005).spikes["reasoning"] == want
    )
    for block in (977, 10_000):
        real = normalizers.iter_blocks
        monkeypatch.setattr(normalizers, "iter_blocks", lambda n, block=block, real=real: real(n, block))
        got = fit_normalizers(store, seconds, None, max_spikes=8, min_spike_share=0.005).spikes["reasoning"]
        assert got == want


def test_rate_curves_count_events_per_bin():
    trace = synthetic_trace(seed=4, duration_s=1200.0, n_clients=2)
    store = store_from_frame(trace)
    curves = rate_curves(store, 600.0, 1200.0)
    for c, cid in enumerate(store.client_ids):
        t = trace.loc[trace["client_id"] == cid, "timestamp"].to_numpy()
        np.testing.assert_allclose(curves[c], [np.sum(t < 600) / 600, np.sum(t >= 600) / 600], rtol=1e-6)


def test_rate_curves_of_training_events_and_activity_table():
    trace = synthetic_trace(seed=4, duration_s=1200.0, n_clients=2)
    store = store_from_frame(trace)
    # 4 blocks of 300 s, the last of each pair validating: bins of 600 s are half training.
    blocks = ValidationBlocks.for_window(0.0, 1200.0, 0.5, block_s=300.0, min_blocks=1)
    train_only = rate_curves(store, 600.0, 1200.0, blocks)
    full = rate_curves(store, 600.0, 1200.0)
    for c, cid in enumerate(store.client_ids):
        t = trace.loc[trace["client_id"] == cid, "timestamp"].to_numpy() - store.origin_s
        want = [np.sum(t < 300) / 300, np.sum((t >= 600) & (t < 900)) / 300]
        np.testing.assert_allclose(train_only[c], want, rtol=1e-5)
    # A bin wholly inside validation takes the rate between its neighbours.
    thirds = ValidationBlocks.for_window(0.0, 1800.0, 1 / 3, block_s=600.0, min_blocks=1)
    curves = rate_curves(store_from_frame(synthetic_trace(seed=4, duration_s=1800.0)), 600.0, 1800.0, thirds)
    assert np.isfinite(curves).all() and (curves[:, 2] == curves[:, 1]).all()
    table, mean, std = activity_table(full, 1200.0)
    np.testing.assert_allclose(table * std + mean, np.log(full + 1 / 1200.0), rtol=1e-5)
