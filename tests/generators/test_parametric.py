"""Parametric per-client generator: parameter recovery, burstiness, dependence, rate control, likelihood."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from servegen_ml.compose import interarrival as ia
from servegen_ml.core.spec import TIME_RESOLUTION_S, GenerationSpec
from servegen_ml.generators.parametric import ParametricGenerator
from servegen_ml.pool import ClientPool
from servegen_ml.trace.schema import make_trace
from tests.factories import gamma_arrivals, synthetic_trace


def weibull_arrivals(rng, rate, shape, duration_s):
    scale = 1.0 / (rate * np.exp(np.log(ia._mean_over_scale(np.array([ia.WEIBULL]), np.array([shape])))[0]))
    t = np.cumsum(scale * rng.weibull(shape, int(rate * duration_s * 3 + 100)))
    return t[t < duration_s]


def one_client_trace(t, client="a", rng=None):
    rng = rng or np.random.default_rng(0)
    n = len(t)
    return make_trace(
        {
            "timestamp": t,
            "client_id": np.full(n, client),
            "input_tokens": rng.integers(10, 1000, n),
            "output_tokens": rng.integers(1, 300, n),
        }
    )


def test_recovers_gamma_windows():
    rng = np.random.default_rng(1)
    t = gamma_arrivals(rng, rate=3.0, cv=1 / np.sqrt(0.4), duration_s=3600.0)
    gen = ParametricGenerator(rate_window_s=1200.0).fit(one_client_trace(t))
    rates = gen.pool_.rates
    assert len(rates) == 3
    assert (rates["family"].astype(str) == "Gamma").all()
    np.testing.assert_allclose(rates["shape"], 0.4, rtol=0.12)
    np.testing.assert_allclose(rates["rate"], 3.0, rtol=0.12)


def test_recovers_weibull_windows():
    rng = np.random.default_rng(2)
    t = weibull_arrivals(rng, rate=2.0, shape=0.6, duration_s=3600.0)
    gen = ParametricGenerator(rate_window_s=1200.0).fit(one_client_trace(t))
    rates = gen.pool_.rates
    assert (rates["family"].astype(str) == "Weibull").all()
    np.testing.assert_allclose(rates["shape"], 0.6, rtol=0.10)
    np.testing.assert_allclose(rates["rate"], 2.0, rtol=0.15)


def test_sparse_windows_fall_back_to_the_client_fit():
    rng = np.random.default_rng(3)
    dense = gamma_arrivals(rng, rate=2.0, cv=2.0, duration_s=600.0)
    sparse = 600.0 + np.sort(rng.uniform(0, 600, 5))
    trace = one_client_trace(np.concatenate([dense, sparse]))
    gen = ParametricGenerator(rate_window_s=600.0, data_window_s=600.0, min_events=20).fit(trace)
    rates = gen.pool_.rates.set_index("window_start_s")
    gaps = [np.diff(dense), np.diff(sparse)]
    all_gaps = np.concatenate(gaps)
    all_gaps = np.where(all_gaps > 0, all_gaps, TIME_RESOLUTION_S / 2)  # as the fit treats ties
    _, client_shape, _, _ = ia.fit_renewal(all_gaps, np.zeros(len(all_gaps), dtype=np.int64), 1)
    assert rates.loc[600.0, "shape"] == pytest.approx(client_shape[0], rel=1e-9)
    assert rates.loc[600.0, "rate"] == pytest.approx(5 / (trace["timestamp"].max() - 600.0))
    windows = set(gen.pool_.pmfs.loc[gen.pool_.pmfs["client_id"] == "a", "window_start_s"])
    assert windows == {0.0, -1.0}  # the sparse data window is not stored


def test_generated_counts_keep_the_fitted_burstiness():
    rng = np.random.default_rng(4)
    cv = 2.0
    trace = one_client_trace(gamma_arrivals(rng, rate=4.0, cv=cv, duration_s=7200.0))
    gen = ParametricGenerator().fit(trace)
    out = gen.sample(GenerationSpec.from_values(duration_s=7200.0), np.random.default_rng(5))

    def dispersion(ts):
        counts = np.bincount((ts // 60).astype(int), minlength=120)
        return counts.var() / counts.mean()

    fitted_cv2 = np.mean(
        ia.cv_of(ia.family_code(gen.pool_.rates["family"].astype(str)), gen.pool_.rates["shape"]) ** 2
    )
    generated = dispersion(out["timestamp"].to_numpy())
    assert generated == pytest.approx(fitted_cv2, rel=0.35)
    assert generated == pytest.approx(dispersion(trace["timestamp"].to_numpy()), rel=0.45)
    assert generated > 2.0  # forced rate x window counts would give ~0, Poisson 1


def mixture_trace(seed=0, n_clients=6, duration_s=3600.0):
    """Clients differ in both input and output scale; fields are independent within a client."""
    rng = np.random.default_rng(seed)
    parts = []
    for c in range(n_clients):
        t = gamma_arrivals(rng, rate=0.5 + 0.2 * c, cv=1.5, duration_s=duration_s)
        n = len(t)
        parts.append(
            pd.DataFrame(
                {
                    "timestamp": t,
                    "client_id": f"c{c}",
                    "input_tokens": np.round(np.exp(5.0 + 0.5 * c + 0.6 * rng.standard_normal(n))).astype(
                        int
                    ),
                    "output_tokens": np.round(np.exp(3.0 + 0.4 * c + 0.6 * rng.standard_normal(n))).astype(
                        int
                    )
                    + 1,
                }
            )
        )
    df = pd.concat(parts).sort_values("timestamp", kind="stable")
    return make_trace({k: df[k].to_numpy() for k in df.columns})


def test_input_output_dependence_is_kept_and_not_forced_to_one():
    trace = mixture_trace()
    gen = ParametricGenerator().fit(trace)
    out = gen.sample(GenerationSpec.from_values(duration_s=3600.0), np.random.default_rng(6))
    real = stats.spearmanr(trace["input_tokens"], trace["output_tokens"]).statistic
    synthetic = stats.spearmanr(out["input_tokens"], out["output_tokens"]).statistic
    assert 0.3 < real < 0.9
    assert synthetic == pytest.approx(real, abs=0.08)
    # Within a client the fields are drawn with separate uniforms: no rank lock-step.
    one = out[out["client_id"] == "c5"]
    assert abs(stats.spearmanr(one["input_tokens"], one["output_tokens"]).statistic) < 0.1


@pytest.fixture(scope="module")
def fitted_mixture():
    return ParametricGenerator().fit(mixture_trace())


@pytest.mark.parametrize("rate,expected", [("20", 20.0), ("scale:2", None)])
def test_rate_control_reaches_the_target(fitted_mixture, rate, expected):
    spec = GenerationSpec.from_values(duration_s=3600.0, rate=rate)
    natural = (
        len(fitted_mixture.sample(GenerationSpec.from_values(duration_s=3600.0), np.random.default_rng(7)))
        / 3600
    )
    out = fitted_mixture.sample(spec, np.random.default_rng(8))
    target = expected if expected is not None else 2 * natural
    assert len(out) / 3600 == pytest.approx(target, rel=0.1)
    # Every client keeps its share.
    shares = out["client_id"].value_counts(normalize=True)
    assert shares["c5"] > shares["c0"]


def test_rate_curve_shapes_the_traffic(fitted_mixture):
    spec = GenerationSpec.from_values(duration_s=3600.0, rate="curve:0=5,3600=25")
    ts = fitted_mixture.sample(spec, np.random.default_rng(9))["timestamp"].to_numpy()
    first, second = np.sum(ts < 1800), np.sum(ts >= 1800)
    assert first / 1800 == pytest.approx(10.0, rel=0.15)
    assert second / 1800 == pytest.approx(20.0, rel=0.15)


def test_client_selection(fitted_mixture):
    spec = GenerationSpec.from_values(duration_s=600.0, clients=["c1", "c4"])
    out = fitted_mixture.sample(spec, np.random.default_rng(0))
    assert set(out["client_id"]) == {"c1", "c4"}
    with pytest.raises(ValueError, match="unknown client ids"):
        fitted_mixture.sample(
            GenerationSpec.from_values(duration_s=60.0, clients=["zz"]), np.random.default_rng(0)
        )
    new = fitted_mixture.sample(
        GenerationSpec.from_values(duration_s=1800.0, clients="new:20"), np.random.default_rng(0)
    )
    assert set(new["client_id"]) <= {f"new-{i}" for i in range(20)}
    assert new["client_id"].nunique() == 20
    # New clients copy fitted ones uniformly (3 copies of each of the 6, 2 once more), not by traffic:
    # 20 of them send about 20/6 of the 6 clients' 6 req/s (a traffic-weighted draw would send ~23).
    assert 18 * 1.0 * 0.9 < len(new) / 1800.0 < (18 * 1.0 + 2 * 1.5) * 1.1


def test_poisson_time_likelihood_has_the_closed_form():
    """With Gamma(shape 1) windows the discretized renewal likelihood is N log(1 - e^(-lam d)) - lam T."""
    lam, w = 0.5, 100.0
    pool = ClientPool(
        clients=("a",),
        rates=pd.DataFrame(
            {
                "client_id": ["a"] * 10,
                "window_start_s": np.arange(10) * w,
                "rate": [lam] * 10,
                "cv": [1.0] * 10,
                "family": ["Gamma", "Weibull"] * 5,
                "shape": [1.0] * 10,
                "scale": [1 / lam] * 10,
            }
        ),
        pmfs=pd.DataFrame(
            {
                "client_id": ["a", "a", "*", "*"],
                "window_start_s": [-1.0] * 4,
                "field": ["input_tokens", "output_tokens"] * 2,
                "value": [5.0, 6.0, 5.0, 6.0],
                "prob": [1.0] * 4,
                "count": [100.0] * 4,
            }
        ),
        rate_window_s=w,
        data_window_s=1000.0,
        span_s=1000.0,
    )
    gen = ParametricGenerator(rate_window_s=w, data_window_s=1000.0)
    gen.pool_ = pool
    # Events with a long silence spanning empty windows, and the window end after the last event.
    t = np.array([12.0, 13.5, 40.0, 350.0, 351.0, 620.0])
    trace = make_trace(
        {"timestamp": t, "client_id": ["a"] * 6, "input_tokens": [5] * 6, "output_tokens": [6] * 6}
    )
    lp = gen.log_prob(trace, window_end_s=900.0)
    expected = len(t) * np.log1p(-np.exp(-lam * TIME_RESOLUTION_S)) - lam * (900.0 - 12.0)
    assert lp["time"].sum() == pytest.approx(expected, rel=1e-9)
    assert lp["input_tokens"].max() < 0 and lp["input_tokens"].min() > -0.01  # only smoothing mass lost


def test_unseen_values_and_clients_score_finitely():
    trace = synthetic_trace(seed=1, duration_s=900.0, n_clients=2, reasoning=True)
    gen = ParametricGenerator().fit(trace)
    other = synthetic_trace(seed=2, duration_s=900.0, n_clients=3, reasoning=True)
    lp = gen.log_prob(other)
    assert np.isfinite(lp.to_numpy()).all()
    seen = gen.log_prob(trace)
    assert lp["input_tokens"].mean() < seen["input_tokens"].mean()


def test_loads_a_servegen_pool_as_a_fit(shared_traces, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVEGEN_ML_CACHE_DIR", str(tmp_path / "cache"))
    gen = ParametricGenerator.from_pool(shared_traces / "servegen" / "reason" / "deepseek-r1")
    assert gen.is_fitted and len(gen.clients) == 73
    spec = GenerationSpec.from_values(duration_s=300.0, start_s=43_200.0, rate="scale:2")
    out = gen.sample(spec, np.random.default_rng(0))
    assert len(out) > 1000 and "reasoning_tokens" in out.columns
    lp = gen.log_prob(out.iloc[:3000].assign(timestamp=out["timestamp"].iloc[:3000] + 43_200.0))
    assert np.isfinite(lp.to_numpy()).all()
    gen.save(tmp_path / "ck")
    again = ParametricGenerator.load(tmp_path / "ck")
    pd.testing.assert_frame_equal(again.sample(spec, np.random.default_rng(0)), out)
