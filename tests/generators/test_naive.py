"""Naive generator: aggregate rate and CV, independent aggregate fields, client shares in the likelihood."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.naive import NaiveGenerator
from tests.factories import synthetic_trace


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace(seed=3, duration_s=3600.0, n_clients=4)


def _gap_cv(ts):
    gaps = np.diff(np.sort(ts))
    return gaps.std() / gaps.mean()


def test_poisson_at_the_aggregate_rate(trace):
    gen = NaiveGenerator().fit(trace)
    out = gen.sample(GenerationSpec.from_values(duration_s=3600.0), np.random.default_rng(0))
    rate = len(trace) / (trace["timestamp"].max() - trace["timestamp"].min())
    assert len(out) == pytest.approx(rate * 3600, abs=4 * np.sqrt(rate * 3600))
    assert _gap_cv(out["timestamp"].to_numpy()) == pytest.approx(1.0, abs=0.05)
    assert set(out["client_id"]) == {"all"}


def test_gamma_option_keeps_the_aggregate_cv():
    trace = synthetic_trace(seed=4, duration_s=3600.0, n_clients=1)  # one client: CV 0.7
    bursty = synthetic_trace(seed=5, duration_s=3600.0, n_clients=6)
    bursty = bursty[bursty["client_id"] == "c5"].reset_index(drop=True)  # CV 3
    for tr in (trace, bursty):
        gen = NaiveGenerator(arrival="gamma").fit(tr)
        out = gen.sample(GenerationSpec.from_values(duration_s=3600.0), np.random.default_rng(1))
        real_cv = _gap_cv(tr["timestamp"].to_numpy())
        assert _gap_cv(out["timestamp"].to_numpy()) == pytest.approx(real_cv, rel=0.25)


def test_fields_are_aggregate_marginals_drawn_independently(trace):
    gen = NaiveGenerator().fit(trace)
    out = gen.sample(GenerationSpec.from_values(duration_s=3600.0), np.random.default_rng(2))
    assert stats.ks_2samp(out["input_tokens"], trace["input_tokens"]).statistic < 0.05
    assert stats.spearmanr(trace["input_tokens"], trace["output_tokens"]).statistic > 0.3
    assert abs(stats.spearmanr(out["input_tokens"], out["output_tokens"]).statistic) < 0.05


def test_clients_are_rejected_and_shares_enter_the_likelihood(trace):
    gen = NaiveGenerator().fit(trace)
    with pytest.raises(ValueError, match="no clients"):
        gen.sample(GenerationSpec.from_values(duration_s=60.0, clients="new:3"), np.random.default_rng(0))
    head = trace.iloc[:200].reset_index(drop=True)
    base = gen.log_prob(head)
    relabelled = gen.log_prob(head.assign(client_id="never-seen"))
    counts = trace["client_id"].value_counts()
    total = counts.sum() + 0.5 * (len(counts) + 1)
    share = np.log((counts.reindex(head["client_id"]).to_numpy() + 0.5) / total)
    np.testing.assert_allclose(base["time"] - relabelled["time"], share - np.log(0.5 / total))
    np.testing.assert_allclose(base["input_tokens"], relabelled["input_tokens"])
