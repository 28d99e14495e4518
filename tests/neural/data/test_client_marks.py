"""Per-client marginals: counted exactly, and the heads start at each client's own marginal."""

import numpy as np
import pytest
import torch

from servegen_ml.neural.data.client_marks import PRIOR_EVENTS, fit_client_marks
from servegen_ml.neural.data.events import store_from_frame
from servegen_ml.neural.data.normalizers import fit_normalizers
from servegen_ml.neural.model.tpp import MarkedTPP
from servegen_ml.trace.schema import make_trace

N = 4000


@pytest.fixture(scope="module")
def trace():
    """Client "small": median input 50, 30 % of requests exactly 1,000 tokens, half of its arrivals
    simultaneous; client "large": median input 2,400, Poisson arrivals; "rare": 3 requests."""
    rng = np.random.default_rng(3)
    small_t = np.repeat(np.sort(rng.uniform(0, 3600, N // 2)), 2)
    small_in = np.where(
        rng.random(N) < 0.3, 1000, np.round(np.exp(np.log(50) + 0.5 * rng.standard_normal(N)))
    )
    large_t = np.sort(rng.uniform(0, 3600, N))
    large_in = np.round(np.exp(np.log(2400) + 0.3 * rng.standard_normal(N)))
    t = np.concatenate([small_t, large_t, [10.0, 20.0, 30.0]])
    order = np.argsort(t, kind="stable")
    return make_trace(
        {
            "timestamp": t[order],
            "client_id": np.array(["small"] * N + ["large"] * N + ["rare"] * 3)[order],
            "input_tokens": np.concatenate([small_in, large_in, [5, 6, 7]]).astype(np.int64)[order],
            "output_tokens": np.concatenate([np.full(N, 3), np.full(N, 300), [1, 1, 1]])[order],
        }
    )


@pytest.fixture(scope="module")
def fitted(trace):
    store = store_from_frame(trace)
    norm = fit_normalizers(store, lambda client, t: t, max_spikes=8, min_spike_share=0.05)
    return store, norm, fit_client_marks(store, norm)


def _row(store, client):
    return store.client_ids.index(client)


def test_client_marginals_count_each_clients_spikes_and_continuous_values(trace, fitted):
    store, norm, marks = fitted
    assert 1000 in norm.spikes["input"]
    m = marks.heads["input"]
    small, large = _row(store, "small"), _row(store, "large")
    spike = norm.spikes["input"].index(1000)
    real = trace[trace.client_id == "small"].input_tokens.to_numpy()
    assert m.categories[small, spike] == (real == 1000).sum()
    assert m.categories.sum(1)[small] == N and m.continuous.sum() + m.categories[:, :-1].sum() == len(trace)
    _, q = m.quantiles(np.array([0.5]))
    continuous = real[~np.isin(real, norm.spikes["input"])]
    assert np.expm1(q[small, 0]) == pytest.approx(np.median(continuous), rel=0.06)
    assert np.expm1(q[large, 0]) == pytest.approx(2400, rel=0.06)


def test_a_client_with_few_values_leans_on_the_pooled_marginal(fitted):
    store, _, marks = fitted
    pooled, client = marks.heads["input"].quantiles(np.array([0.5]))
    own = np.log1p(6.0)  # 'rare' has 5, 6, 7
    weight = 3 / (3 + PRIOR_EVENTS)
    got = client[_row(store, "rare"), 0]
    assert abs(got - (weight * own + (1 - weight) * pooled[0])) < 0.1 * weight


def test_heads_start_at_each_clients_own_marginal(fitted):
    """Sampled from the initialized heads with no history, each client's input median and spike share
    are its own: without per-client offsets both would get the pooled ones."""
    store, norm, marks = fitted
    torch.manual_seed(0)
    tpp = MarkedTPP(len(store.client_ids), store.layout.to_dict(), norm.spikes, hidden=8, head_hidden=8)
    tpp.set_normalizers(norm)
    tpp.init_marks(marks, norm)
    proj = tpp.heads.project(torch.zeros(len(store.client_ids), 8))
    cond = torch.zeros(len(store.client_ids), 16)
    raw = tpp.heads.raw("input", proj, cond, tpp.heads.client_offsets.weight)
    rng = np.random.default_rng(0)
    draws = {
        c: tpp.count_dist("input", raw[_row(store, c)].expand(20_000, -1)).sample(rng, 10**6)
        for c in ("small", "large")
    }
    assert np.median(draws["large"]) == pytest.approx(2400, rel=0.1)
    assert np.mean(draws["small"] == 1000) == pytest.approx(0.3, abs=0.03)
    assert np.median(draws["small"][draws["small"] != 1000]) == pytest.approx(50, rel=0.15)
    assert "time" not in marks.heads  # the time head keeps its generic start
