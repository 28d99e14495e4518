import json

import numpy as np
import pandas as pd
import pytest

from servegen_ml.bench import metrics as M
from servegen_ml.trace.schema import make_trace
from tests.factories import gamma_arrivals, synthetic_trace


def stream(
    seed, cv=1.0, rate=4.0, duration_s=3600.0, n_clients=3, input_mu=6.0, corr=0.7, conversations=False
):
    """Clients with a given inter-arrival CV, log-normal input and an output correlated with it."""
    rng = np.random.default_rng(seed)
    parts = [gamma_arrivals(rng, rate / n_clients, cv, duration_s) for _ in range(n_clients)]
    t = np.concatenate(parts)
    ids = np.concatenate([np.full(len(p), f"c{i}") for i, p in enumerate(parts)])
    order = np.argsort(t, kind="stable")
    n = len(t)
    z = rng.standard_normal((n, 2))
    cols = {
        "timestamp": t[order],
        "client_id": ids[order],
        "input_tokens": np.round(np.exp(input_mu + 0.8 * z[:, 0])).astype(np.int64),
        "output_tokens": np.round(
            np.exp(4.5 + 0.7 * (corr * z[:, 0] + np.sqrt(1 - corr**2) * z[:, 1]))
        ).astype(np.int64)
        + 1,
    }
    if conversations:
        cols["conversation_id"] = [f"k{i}" for i in rng.integers(0, n // 3, n)]
    return make_trace(cols)


def distances(results):
    return {k: v["distance"] for k, v in results.items()}


@pytest.fixture(scope="module")
def rich():
    a = synthetic_trace(seed=0, duration_s=3600, n_clients=4, multimodal=True, reasoning=True)
    a["conversation_id"] = pd.array(
        [f"k{i}" for i in np.random.default_rng(0).integers(0, len(a) // 2, len(a))], dtype="string[pyarrow]"
    )
    b = synthetic_trace(seed=1, duration_s=3600, n_clients=4, multimodal=True, reasoning=True)
    b["conversation_id"] = pd.array(
        [f"k{i}" for i in np.random.default_rng(1).integers(0, len(b) // 2, len(b))], dtype="string[pyarrow]"
    )
    return a, b


def test_every_metric_is_zero_for_identical_traces(rich):
    a, _ = rich
    res = M.compute_all(a, a.copy())
    for name, r in res.items():
        assert r["distance"] == 0.0, name
        assert all(v in (None, 0.0) for v in r["components"].values()), name


def test_metrics_are_symmetric_except_token_load(rich):
    a, b = rich
    ab, ba = M.compute_all(a, b), M.compute_all(b, a)
    for name in ab:
        if name == "M6_token_load":
            continue
        assert ab[name]["distance"] == pytest.approx(ba[name]["distance"], rel=1e-9, abs=1e-12), name
    assert all(d is not None and d > 0 for d in distances(ab).values())


def test_burstiness_separates_poisson_from_gamma_at_the_same_rate():
    real = stream(0, cv=1.0)
    floor = M.m2_burstiness(stream(1, cv=1.0), real)["distance"]
    bursty = M.m2_burstiness(stream(2, cv=3.0), real)
    assert bursty["distance"] > 5 * floor
    assert (
        bursty["stats"]["dispersion_index"]["synthetic"]["60"]
        > 2 * bursty["stats"]["dispersion_index"]["real"]["60"]
    )


def test_marginals_detect_shifted_lengths():
    real = stream(0)
    floor = M.m3_marginals(stream(1), real)
    shifted = M.m3_marginals(stream(2, input_mu=6.5), real)
    assert shifted["components"]["log1p_input_tokens.ks"] > 5 * floor["components"]["log1p_input_tokens.ks"]
    assert shifted["components"]["log1p_input_tokens.wasserstein"] == pytest.approx(0.5, rel=0.1)
    assert shifted["distance"] > 3 * floor["distance"]


def test_dependence_detects_independent_input_and_output():
    real = stream(0, corr=0.7)
    floor = M.m4_dependence(stream(1, corr=0.7), real)
    indep = M.m4_dependence(stream(2, corr=0.0), real)
    assert indep["components"]["input_output.overall"] > 0.5
    assert indep["components"]["input_output.within_client"] > 0.5
    assert indep["distance"] > 10 * floor["distance"]
    assert "input_ratio.overall" not in indep["components"]  # no reasoning in either trace


def test_dependence_floor_is_at_least_the_expected_sampling_difference():
    # Two real traces that agree exactly (observed difference 0) get the difference two
    # independent samples of their size would show: for n independent pairs the Spearman sd is
    # about 1 / sqrt(n), so E|rho_a - rho_b| = sqrt(2 / pi) * sqrt(2 / n).
    real = stream(0, corr=0.0, rate=1.0, n_clients=1)
    floor = M.m4_floor(real, real.copy(), np.random.default_rng(0))
    expected = np.sqrt(2 / np.pi) * np.sqrt(2 / len(real))
    for name in ("input_output.overall", "input_output.within_client"):
        assert floor["stats"][name]["observed_difference"] == 0.0
        assert 0.75 * expected < floor["components"][name] < 1.25 * expected
    # A real difference larger than the sampling error stays as observed.
    other = stream(1, corr=0.7, rate=1.0, n_clients=1)
    floor = M.m4_floor(other, real, np.random.default_rng(0))
    assert floor["components"]["input_output.overall"] == pytest.approx(
        M.m4_dependence(other, real)["components"]["input_output.overall"]
    )
    assert floor["components"]["input_output.overall"] > 0.5


def test_rate_dynamics_detect_a_rate_swing():
    rng = np.random.default_rng(3)
    flat = stream(0, duration_s=7200)
    t = np.cumsum(rng.exponential(0.25, 40_000))
    keep = rng.random(len(t)) < 0.5 + 0.45 * np.sin(2 * np.pi * t / 1800)  # 30-minute swing
    swing = make_trace(
        {
            "timestamp": t[keep][t[keep] < 7200],
            "client_id": ["c0"] * int((t[keep] < 7200).sum()),
            "input_tokens": np.ones(int((t[keep] < 7200).sum()), int),
            "output_tokens": np.ones(int((t[keep] < 7200).sum()), int),
        }
    )
    floor = M.m5_rate_dynamics(stream(1, duration_s=7200), flat)["distance"]
    assert M.m5_rate_dynamics(swing, flat)["distance"] > 5 * floor


def test_token_load_is_a_relative_error():
    real = stream(0)
    doubled = real.copy()
    doubled["input_tokens"] *= 2
    r = M.m6_token_load(doubled, real)
    for q in ("p50", "p99", "max"):
        assert r["components"][f"prefill.{q}"] == pytest.approx(1.0)
        assert r["components"][f"decode.{q}"] == 0.0
    # relative to the real trace: halving is an error of 0.5, not 1
    assert M.m6_token_load(real, doubled)["components"]["prefill.p50"] == pytest.approx(0.5)


def test_conversations_detect_longer_conversations_and_are_absent_without_ids():
    real = stream(0, conversations=True)
    longer = real.copy()
    longer["conversation_id"] = pd.array(
        [f"k{i}" for i in np.random.default_rng(5).integers(0, len(real) // 8, len(real))],
        dtype="string[pyarrow]",
    )
    floor = M.m8_conversations(stream(1, conversations=True), real)["distance"]
    assert M.m8_conversations(longer, real)["distance"] > 5 * floor
    absent = M.m8_conversations(stream(0), real)
    assert absent["distance"] is None and "synthetic" in absent["absent"]


def test_client_heterogeneity_detects_a_planted_top_client():
    real = stream(0, n_clients=5)
    heavy = real.copy()
    heavy.loc[heavy.index[: len(heavy) // 2], "client_id"] = "c0"
    res = M.client_heterogeneity(heavy, real)
    assert res["components"]["top1_share"] > 0.2
    floor = M.client_heterogeneity(stream(1, n_clients=5), real)["distance"]
    assert res["distance"] > 3 * floor
    one = real.copy()
    one["client_id"] = "only"
    assert M.client_heterogeneity(one, real)["distance"] is None


def test_m9_calibration_sees_a_client_running_away():
    real = stream(0, n_clients=4, duration_s=3 * 3600.0)
    floor = M.m9_calibration(stream(1, n_clients=4, duration_s=3 * 3600.0), real)
    assert floor["stats"]["bins"] == 3 and floor["stats"]["aggregate_ratio"] == pytest.approx(1.0, abs=0.05)
    # Three of the four clients send three times their traffic: most cells and every hour drift.
    extra = real[real["client_id"] != "c3"]
    extra = pd.concat([extra] * 2).assign(timestamp=lambda d: d["timestamp"] + 1e-3)
    runaway = make_trace({k: pd.concat([real, extra])[k].to_numpy() for k in real.columns})
    res = M.m9_calibration(runaway, real)
    assert res["stats"]["aggregate_ratio"] == pytest.approx(2.5, rel=0.05)
    assert res["components"]["bin.median_abs_log_ratio"] == pytest.approx(np.log(2.5), rel=0.05)
    cell = res["components"]["client_bin.median_abs_log_ratio"]
    assert cell == pytest.approx(np.log(3.0), rel=0.05)
    assert cell > 20 * floor["components"]["client_bin.median_abs_log_ratio"]
    assert M.m9_calibration(real, real)["distance"] == 0.0
    renamed = real.assign(client_id="new-" + real["client_id"].astype(str))
    res = M.m9_calibration(renamed, real)
    assert res["components"]["client_bin.median_abs_log_ratio"] is None and res["distance"] is None
    assert res["components"]["bin.median_abs_log_ratio"] == 0.0


def test_m9_calibration_of_a_short_trace_uses_one_bin():
    short = stream(0, duration_s=600.0)
    res = M.m9_calibration(short, short)
    assert res["stats"]["bins"] == 1 and res["stats"]["bin_s"] < 600.0


def test_client_population_counts_every_client_once():
    # 20 clients: a random set of real clients is mostly small; a set of only the heaviest is not.
    rng = np.random.default_rng(0)
    rates = np.exp(rng.normal(-1.0, 1.5, 20))

    def clients(rate_of):
        parts = [
            pd.DataFrame({"timestamp": gamma_arrivals(rng, r, 1.0, 3600.0), "client_id": f"c{i}"})
            for i, r in enumerate(rate_of)
        ]
        df = pd.concat(parts).sort_values("timestamp", kind="stable")
        n = len(df)
        return make_trace(
            {
                "timestamp": df["timestamp"].to_numpy(),
                "client_id": df["client_id"].to_numpy(),
                "input_tokens": np.full(n, 100),
                "output_tokens": np.full(n, 10),
            }
        )

    real = clients(rates)
    heavy = clients(np.full(20, rates.max()))
    res, floor = M.client_population(heavy, real), M.client_population(clients(rates), real)
    assert res["components"]["rate.wasserstein_log10"] > 5 * floor["components"]["rate.wasserstein_log10"]
    assert res["stats"]["total_rate_rps"]["synthetic"] > 3 * res["stats"]["total_rate_rps"]["real"]
    assert res["components"]["input_median.wasserstein_log10"] == 0.0
    assert M.client_population(real.assign(client_id="one"), real)["distance"] is None


def test_missing_fields_are_absent_components(rich):
    a, _ = rich
    plain = stream(0)
    res = M.m3_marginals(plain, a)
    assert res["components"]["reasoning_ratio.ks"] is None
    assert "reasoning_ratio.ks" in res["absent_components"]
    assert res["distance"] is not None


def test_noise_floor_ratio_and_json():
    assert M.noise_floor_ratio(0.0, 0.0) == 1.0
    assert M.noise_floor_ratio(0.2, 0.1) == pytest.approx(0.201 / 0.101)
    assert M.noise_floor_ratio(None, 0.1) is None
    assert M.noise_floor_ratio(0.1, 0.0) == pytest.approx(101.0)
    a, b, c = stream(0), stream(1), stream(2, cv=3.0)
    syn, floor = M.compute_all(c, a), M.compute_all(b, a)
    r = M.ratios(syn, floor)
    assert r["M2_burstiness"]["distance"] > 3
    assert r["M8_conversations"]["distance"] is None
    text = json.dumps(M.jsonable({"syn": syn, "ratio": r}))
    assert "plot" not in json.loads(text)["syn"]["M2_burstiness"]


def test_m1_summarizes_log_prob_parts():
    lp = pd.DataFrame({"time": [-1.0, -3.0], "input_tokens": [-2.0, -2.0]})
    lp["total"] = lp.sum(axis=1)
    r = M.m1_log_likelihood(lp)
    assert r["distance"] == pytest.approx(4.0)
    assert r["components"] == {"time": 2.0, "input_tokens": 2.0, "total": 4.0}
