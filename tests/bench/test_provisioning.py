import numpy as np
import pandas as pd
import pytest

from servegen_ml.bench.provisioning import SLO, smallest_instance_count, under_provisioning_error
from servegen_ml.bench.serving_model import ServingModel
from servegen_ml.bench.simulator import simulate
from tests.factories import gamma_arrivals

SLO_FIXED = SLO(ttft_excess_p99_s=1.0, tbt_p99_s=0.1)


def load_trace(seed: int, rate_rps: float, duration_s: float = 300.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate_rps * duration_s)
    return pd.DataFrame(
        {
            "timestamp": np.sort(rng.uniform(0, duration_s, n)),
            "input_tokens": np.rint(np.exp(rng.normal(7.6, 0.7, n))).astype(np.int64) + 1,
            "output_tokens": np.rint(np.exp(rng.normal(5.0, 0.7, n))).astype(np.int64) + 1,
        }
    )


@pytest.fixture(scope="module")
def counts_by_rate():
    return {
        rate: smallest_instance_count(load_trace(1, rate), SLO_FIXED).instances for rate in (2.0, 8.0, 20.0)
    }


def test_more_instances_as_load_rises(counts_by_rate):
    counts = [counts_by_rate[r] for r in (2.0, 8.0, 20.0)]
    assert all(c is not None for c in counts)
    assert counts[0] <= counts[1] <= counts[2] and counts[0] < counts[2]


def test_fewer_instances_as_instances_get_faster(counts_by_rate):
    faster = smallest_instance_count(load_trace(1, 20.0), SLO_FIXED, ServingModel().faster(3.0)).instances
    assert faster < counts_by_rate[20.0]


def test_search_returns_the_smallest_count_meeting_the_slo():
    result = smallest_instance_count(load_trace(2, 8.0), SLO_FIXED)
    n = result.instances
    ok = {k: v["ttft_excess_p99_s"] <= 1.0 and v["tbt_p99_s"] <= 0.1 for k, v in result.tried.items()}
    assert ok[n] and not ok[n - 1]


def test_unreachable_slo_gives_none():
    result = smallest_instance_count(load_trace(3, 2.0), SLO(tbt_p99_s=1e-4), max_instances=8)
    assert result.instances is None and max(result.tried) == 8


def test_slo_measures_ttft_beyond_the_prompt_alone():
    trace = load_trace(4, 2.0)
    model = ServingModel()
    result = simulate(trace, 2, model)
    isolated = model.isolated_ttft_s(trace["input_tokens"].to_numpy())
    measured = SLO().measure(result, isolated)
    assert measured["ttft_excess_p99_s"] == pytest.approx(np.quantile(result.ttft_s - isolated, 0.99))
    assert measured["ttft_p99_s"] > measured["ttft_excess_p99_s"] >= 0
    assert SLO(ttft_excess_p99_s=measured["ttft_excess_p99_s"], tbt_p99_s=1.0).met(measured)
    assert not SLO(ttft_excess_p99_s=measured["ttft_excess_p99_s"] * 0.9, tbt_p99_s=1.0).met(measured)
    assert not SLO(ttft_excess_p99_s=None, ttft_p99_s=measured["ttft_p99_s"] * 0.9).met(measured)


def test_under_provisioning_error():
    assert under_provisioning_error(10, 8) == pytest.approx(0.2)
    assert under_provisioning_error(10, 12) == pytest.approx(-0.2)
    assert under_provisioning_error(None, 3) is None and under_provisioning_error(4, None) is None
    with pytest.raises(ValueError):
        SLO(ttft_excess_p99_s=0.0)


def test_slo_below_the_unloaded_ttft_is_reported_unreachable_without_simulating():
    result = smallest_instance_count(load_trace(3, 2.0), SLO(ttft_p99_s=0.05))
    assert result.instances is None and result.tried == {} and "served alone" in result.unreachable
    assert "unreachable" in result.to_dict()


def test_bursty_stream_needs_more_instances_than_poisson_at_the_same_rate():
    rng = np.random.default_rng(0)
    t = gamma_arrivals(rng, 8.0, 4.0, 300.0)
    lengths = load_trace(5, 20.0).iloc[: len(t)].reset_index(drop=True)
    bursty = lengths.assign(timestamp=t)
    poisson = lengths.assign(timestamp=np.sort(rng.uniform(0, 300.0, len(t))))
    needed = {
        name: smallest_instance_count(tr, SLO_FIXED).instances
        for name, tr in [("bursty", bursty), ("poisson", poisson)]
    }
    assert needed["bursty"] > needed["poisson"]
    assert under_provisioning_error(needed["bursty"], needed["poisson"]) > 0.2
