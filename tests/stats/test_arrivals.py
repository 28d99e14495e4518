import numpy as np
import pytest

from servegen_ml.stats.arrivals import (
    ArrivalAccumulator,
    cv_per_window,
    dispersion_index,
    fit_inter_arrivals,
    gap_cv,
    inter_arrival_s,
)
from tests.factories import gamma_arrivals


def test_gamma_stream_cv_is_recovered_per_window_and_overall():
    t = gamma_arrivals(np.random.default_rng(0), rate=5.0, cv=2.5, duration_s=7200)
    windows = cv_per_window(t, 600, min_gaps=10)
    assert windows["cv"].median() == pytest.approx(2.5, rel=0.1)
    assert gap_cv(inter_arrival_s(t)) == pytest.approx(2.5, rel=0.1)


def test_cv_counts_only_gaps_inside_a_window():
    t = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 13.0])
    w = cv_per_window(t, 10.0, min_gaps=1)
    assert list(w["n_gaps"]) == [3, 2]  # the 3 -> 10 gap crosses the boundary
    assert w["cv"].iloc[0] == pytest.approx(0.0)


def test_dispersion_is_about_one_for_poisson_and_large_for_bursty():
    rng = np.random.default_rng(1)
    poisson = np.cumsum(rng.exponential(0.2, 40_000))
    bursty = gamma_arrivals(rng, rate=5.0, cv=3.0, duration_s=8000)
    idc_p = dispersion_index(poisson, (1, 10, 60))
    idc_b = dispersion_index(bursty, (1, 10, 60))
    assert all(0.85 < v < 1.15 for v in idc_p.values())
    assert all(v > 3 for v in idc_b.values())


def test_dispersion_needs_enough_windows():
    t = np.linspace(0, 100, 50)
    assert np.isnan(dispersion_index(t, (60,))[60.0])


@pytest.mark.parametrize("family", ["weibull", "gamma"])
def test_fit_chooses_the_generating_family(family):
    rng = np.random.default_rng(2)
    gaps = rng.weibull(0.5, 20_000) * 0.3 if family == "weibull" else rng.gamma(0.4, 0.5, 20_000)
    fits = fit_inter_arrivals(gaps)
    assert fits["best"] == family
    params = fits["families"][family]["params"]
    assert params["shape"] == pytest.approx(0.5 if family == "weibull" else 0.4, rel=0.05)
    assert fits["families"][family]["ks_statistic"] < fits["families"]["exponential"]["ks_statistic"]


def test_fit_reports_ties_and_skips_them():
    gaps = np.r_[np.zeros(100), np.random.default_rng(3).exponential(1.0, 900)]
    fits = fit_inter_arrivals(gaps)
    assert fits["zero_share"] == pytest.approx(0.1)
    assert fits["fitted"] == 900


def test_streaming_matches_in_memory_definitions():
    t = gamma_arrivals(np.random.default_rng(4), rate=3.0, cv=2.0, duration_s=10_000) + 1234.5
    acc = ArrivalAccumulator(np.random.default_rng(5), cv_window_s=600, min_gaps=10, fit_sample=5000)
    for part in np.array_split(t, 11):
        acc.add(part)
    r = acc.result()
    assert r["requests"] == len(t)
    want = dispersion_index(t, (1, 10, 60, 600))
    for w, v in want.items():
        assert r["dispersion"][f"{w:g}"] == pytest.approx(v, rel=1e-9)
    mem = cv_per_window(t, 600, 10)
    got = r["series"]["cv"]
    np.testing.assert_allclose(got["cv"].to_numpy()[: len(mem)], mem["cv"].to_numpy(), rtol=1e-9)
    assert r["inter_arrival"]["cv"] == pytest.approx(gap_cv(inter_arrival_s(t)), rel=1e-9)
    assert r["inter_arrival"]["fits"]["sampled"] is True
    assert len(r["series"]["gap_sample_s"]) == 5000
