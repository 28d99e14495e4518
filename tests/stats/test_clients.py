import numpy as np
import pandas as pd
import pytest

from servegen_ml.stats.clients import (
    ClientAccumulator,
    client_summary,
    top_share,
    weighted_cdf,
    weighted_quantiles,
)
from servegen_ml.trace.schema import make_trace
from tests.factories import gamma_arrivals, synthetic_trace


def planted_trace(seed=0, duration_s=3600.0):
    """Client 'big' sends ~60% of requests with CV 2; ten small Poisson clients share the rest."""
    rng = np.random.default_rng(seed)
    parts = [("big", gamma_arrivals(rng, 6.0, 2.0, duration_s))]
    parts += [(f"s{i}", gamma_arrivals(rng, 0.4, 1.0, duration_s)) for i in range(10)]
    t = np.concatenate([p[1] for p in parts])
    ids = np.concatenate([np.full(len(p[1]), p[0]) for p in parts])
    order = np.argsort(t, kind="stable")
    n = len(t)
    return make_trace(
        {
            "timestamp": t[order],
            "client_id": ids[order],
            "input_tokens": rng.integers(1, 1000, n),
            "output_tokens": rng.integers(1, 100, n),
        }
    )


def test_top_client_share_and_cv_are_recovered():
    trace = planted_trace()
    s = client_summary(trace)
    big = s.iloc[0]
    assert big["client_id"] == "big"
    assert big["share"] == pytest.approx((trace["client_id"] == "big").mean())
    assert big["share"] == pytest.approx(0.6, abs=0.03)
    assert big["cv"] == pytest.approx(2.0, rel=0.15)
    assert s["rate_rps"].sum() == pytest.approx(len(trace) / np.ptp(trace["timestamp"]))
    assert top_share(s["requests"])["top1"] == pytest.approx(big["share"])


def test_streaming_matches_in_memory():
    trace = synthetic_trace(seed=3, duration_s=7200, n_clients=5)
    acc = ClientAccumulator(float(trace["timestamp"].iloc[0]))
    for idx in np.array_split(np.arange(len(trace)), 9):
        c = trace.iloc[idx]
        acc.add(
            c["timestamp"].to_numpy(),
            c["client_id"],
            c["input_tokens"].to_numpy(),
            c["output_tokens"].to_numpy(),
        )
    got = acc.result(top=3)
    want = client_summary(trace)
    table = got["series"]["table"]
    assert list(table["client_id"]) == list(want["client_id"])
    for col in ("requests", "rate_rps", "cv", "cv_overall", "mean_input", "mean_output"):
        np.testing.assert_allclose(table[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-9)
    assert len(got["series"]["top_rates_rps"]) == 3
    top = want.iloc[0]
    curve = got["series"]["top_rates_rps"][top["client_id"]]
    assert curve.sum() * got["series"]["rate_width_s"] == pytest.approx(top["requests"])


def test_weighted_cdf_and_quantiles_weight_by_traffic():
    x, f = weighted_cdf(np.array([3.0, 1.0, np.nan, 2.0]), np.array([1.0, 8.0, 5.0, 1.0]))
    assert list(x) == [1.0, 2.0, 3.0]
    np.testing.assert_allclose(f, [0.8, 0.9, 1.0])
    assert weighted_quantiles(np.array([1.0, 2.0, 3.0]), np.array([8.0, 1.0, 1.0]))["p50"] == 1.0


def test_single_request_clients_have_no_cv():
    trace = make_trace(
        {
            "timestamp": [0.0, 1.0, 2.0],
            "client_id": ["a", "b", "c"],
            "input_tokens": [1, 2, 3],
            "output_tokens": [1, 1, 1],
        }
    )
    s = client_summary(trace)
    assert s["cv"].isna().all() and len(s) == 3
    assert isinstance(s, pd.DataFrame)
