import math
import time

import numpy as np
import pandas as pd
import pytest

from servegen_ml.bench import simulator
from servegen_ml.bench.serving_model import ServingModel
from servegen_ml.bench.simulator import simulate
from servegen_ml.trace.io import read_trace

MODEL = ServingModel()


def requests(timestamps, inputs, outputs) -> pd.DataFrame:
    return pd.DataFrame({"timestamp": timestamps, "input_tokens": inputs, "output_tokens": outputs})


def load_trace(seed: int, rate_rps: float, duration_s: float = 600.0) -> pd.DataFrame:
    """Poisson arrivals, log-normal prompts (median ~2k tokens) and outputs (median ~150)."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate_rps * duration_s)
    return requests(
        np.sort(rng.uniform(0, duration_s, n)),
        np.maximum(np.rint(np.exp(rng.normal(7.6, 0.8, n))), 1).astype(np.int64),
        np.maximum(np.rint(np.exp(rng.normal(5.0, 0.8, n))), 1).astype(np.int64),
    )


def test_lone_request_matches_hand_computed_steps():
    r = simulate(requests([5.0], [1000], [3]), 1)
    d1 = MODEL.fixed_s(512) + MODEL.prefill_pair_s * 512 * (0 + 513 / 2)
    d2 = MODEL.fixed_s(488) + MODEL.prefill_pair_s * 488 * (512 + 489 / 2)
    d3 = MODEL.fixed_s(1) + MODEL.decode_kv_token_s * 1001
    d4 = MODEL.fixed_s(1) + MODEL.decode_kv_token_s * 1002
    assert r.ttft_s[0] == pytest.approx(d1 + d2, rel=1e-12)
    assert r.finish_s[0] == pytest.approx(5.0 + d1 + d2 + d3 + d4, rel=1e-12)
    assert r.tpot_s[0] == pytest.approx((d3 + d4) / 2, rel=1e-12)
    assert r.tbt_quantile(1.0) == pytest.approx(d4, rel=1e-12)
    assert r.tbt_quantile(0.0) == pytest.approx(d3, rel=1e-12)


@pytest.mark.parametrize("tokens", [1, 511, 512, 513, 5000, 40_000])
def test_isolated_ttft_matches_simulation(tokens):
    r = simulate(requests([0.0], [tokens], [10]), 1)
    assert r.ttft_s[0] == pytest.approx(MODEL.isolated_ttft_s(np.array([tokens]))[0], rel=1e-9)


def test_join_shortest_queue_spreads_simultaneous_requests():
    trace = requests([1.0, 1.0], [3000, 3000], [50, 50])
    alone = MODEL.isolated_ttft_s(np.array([3000]))[0]
    two = simulate(trace, 2)
    assert sorted(two.instance.tolist()) == [0, 1]
    np.testing.assert_allclose(two.ttft_s, alone, rtol=1e-12)
    one = simulate(trace, 1)
    assert one.ttft_s.max() > 1.5 * alone


def test_zero_lengths_count_as_one_token():
    r = simulate(requests([0.0], [0], [0]), 1)
    assert r.finish_s[0] == pytest.approx(r.ttft_s[0]) and math.isnan(r.tpot_s[0])
    assert r.ttft_s[0] == pytest.approx(MODEL.fixed_s(1))


def test_closed_form_runs_and_lazy_routing_match_step_by_step(monkeypatch):
    trace = load_trace(0, rate_rps=3.0, duration_s=300.0)
    fast = [simulate(trace, n) for n in (1, 3)]
    monkeypatch.setattr(simulator._Instance, "_run_quiet_steps", lambda self, until_s: False)
    monkeypatch.setattr(simulator._Instance, "earliest_completion_s", lambda self: -math.inf)
    for n, a in zip((1, 3), fast):
        b = simulate(trace, n)
        np.testing.assert_allclose(a.finish_s, b.finish_s, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(a.instance, b.instance)
        assert a.tbt_quantile(0.99) == pytest.approx(b.tbt_quantile(0.99), rel=1e-12)


def test_kv_capacity_limits_concurrency():
    trace = requests(np.zeros(20), np.full(20, 4000), np.full(20, 300))
    roomy = simulate(trace, 1)
    tight = simulate(trace, 1, ServingModel(kv_capacity_tokens=9000))  # two sequences at a time
    assert tight.ttft_quantile(1.0) > 2 * roomy.ttft_quantile(1.0)
    assert np.isfinite(tight.finish_s).all()


def test_mooncake_hour_simulates_in_seconds(shared_traces):
    trace = read_trace(shared_traces / "mooncake-fast25" / "conversation_trace.jsonl")
    started = time.process_time()
    r = simulate(trace, 8)
    assert time.process_time() - started < 10.0
    assert np.isfinite(r.ttft_s).all() and len(r.ttft_s) == 12_031
