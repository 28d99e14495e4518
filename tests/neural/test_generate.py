"""Rate control of the neural sampler scales the model's own rate, not the trace's.

The fixture is a small untrained model (random heads): its natural rate is about
two thirds of its ``rate_curves`` (the empirical rates of the training trace).
``measured`` adds the model's own curves as fit stores them; without them (older
checkpoints, new clients) a pilot run measures the rate. ``distorted`` moves the
empirical curves further off (in level and shape, including a bin they call idle
while the model sends), so a target reached there cannot come from them.
"""

import time

import numpy as np
import pytest
import torch

from servegen_ml.core.spec import GenerationSpec
from servegen_ml.neural.data.events import store_from_frame
from servegen_ml.neural.data.normalizers import fit_normalizers, rate_curves
from servegen_ml.neural.model.tpp import MarkedTPP
from servegen_ml.neural.population import fit_population
from servegen_ml.neural.sampling import generate
from servegen_ml.neural.sampling.generate import measure_rate_curves, natural_rates, sample_trace
from servegen_ml.neural.sampling.numpy_tpp import NumpyTPP
from servegen_ml.neural.state import NeuralState
from tests.factories import synthetic_trace

SPAN_S, BIN_S = 1800.0, 300.0
SEGMENT_EVENTS, WARMUP_EVENTS = 64, 8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    store = store_from_frame(synthetic_trace(seed=3, duration_s=SPAN_S, n_clients=3))
    norm = fit_normalizers(store)
    kwargs = {
        "n_clients": 3, "layout": store.layout.to_dict(), "spikes": norm.spikes, "hidden": 8, "embedding": 4,
        "head_hidden": 8, "time_components": 2, "mark_components": 2, "activity_bins": 6, "activity_bin_s": BIN_S,
    }  # fmt: skip
    tpp = MarkedTPP(**kwargs)
    tpp.set_normalizers(norm)
    curves = rate_curves(store, BIN_S, SPAN_S)
    tpp.set_activity(curves, SPAN_S)
    weights = {k: v.numpy().copy() for k, v in tpp.state_dict().items()}
    state = NeuralState(
        kwargs, weights, norm.max_count, {}, list(store.client_ids), store.counts.astype(np.int64),
        curves, BIN_S, 0.0, SPAN_S, None, {},
    )  # fmt: skip
    state.population = fit_population(state.client_vectors(), 1, 0)
    return state, NumpyTPP(kwargs, weights, norm.max_count)


def sample(model, rng_seed=0, **spec):
    state, tpp = model
    spec = GenerationSpec.from_values(**{"duration_s": 1200.0, "start_s": 300.0, **spec})
    return sample_trace(state, tpp, spec, np.random.default_rng(rng_seed), SEGMENT_EVENTS, WARMUP_EVENTS)


@pytest.fixture(scope="module")
def measured(model):
    state, tpp = model
    curves = measure_rate_curves(state, tpp, np.random.default_rng(0), SEGMENT_EVENTS, WARMUP_EVENTS)
    return with_fields(state, model_rate_curves=curves), tpp


def with_fields(state, **fields):
    return NeuralState(**{**state.__dict__, **fields})


def distorted(model, factors):
    """The model with its empirical rate curves multiplied per bin (the model itself unchanged)."""
    state, tpp = model
    return with_fields(
        state, rate_curves=state.rate_curves * np.asarray(factors, dtype=np.float32)[None, :]
    ), tpp


def natural_rate(model, seeds=range(1, 7)):
    """Mean req/s of natural-rate samples (each varies by ~6 % over 20 minutes)."""
    return np.mean([len(sample(model, seed)) / 1200.0 for seed in seeds])


@pytest.fixture
def sampler_runs(monkeypatch):
    """Events drawn by each sampling run (the pilot is one, the result another)."""
    runs = []
    real = generate._Sampler.run
    monkeypatch.setattr(generate._Sampler, "run", lambda *a: runs.append(real(*a)) or runs[-1])
    return runs


# Curves 3x too high, 2.5x too low, idle where the model sends, ... over the window 300-1500 s.
FACTORS = (1.0, 3.0, 0.4, 0.0, 3.0, 1.0)


def test_measured_curves_are_the_models_own_rate(model, measured):
    state, _ = measured
    assert state.model_rate_curves.shape == state.rate_curves.shape
    assert state.model_rate_curves.dtype == np.float32
    # The window's (300-1500 s) aggregate within 10 % of six natural-rate samples' mean, while the
    # empirical curves are more than 30 % off.
    natural = natural_rate(model)
    assert state.model_rate_curves[:, 1:5].sum(0).mean() == pytest.approx(natural, rel=0.1)
    assert abs(state.rate_curves[:, 1:5].sum(0).mean() / natural - 1.0) > 0.3
    # Same generator state -> the same curves.
    again = measure_rate_curves(state, model[1], np.random.default_rng(0), SEGMENT_EVENTS, WARMUP_EVENTS)
    np.testing.assert_array_equal(again, state.model_rate_curves)


def test_measurement_passes_until_enough_events_per_bin(model, sampler_runs, monkeypatch):
    state, tpp = model
    n_bins = state.rate_curves.shape[1]

    def passes():  # one sampling run per pass: the span is one chunk
        sampler_runs.clear()
        measure_rate_curves(state, tpp, np.random.default_rng(0), SEGMENT_EVENTS, WARMUP_EVENTS)
        return [len(run.t_s) for run in sampler_runs]

    # ~4,000 events per pass over 6 bins: the minimum number of passes already holds 1,000 per bin.
    assert len(passes()) == generate.MEASURE_MIN_PASSES
    # More events per bin wanted: passes go on exactly until the aggregate holds them.
    monkeypatch.setattr(generate, "MEASURE_EVENTS_PER_BIN", 5_000)
    counts = passes()
    assert len(counts) > generate.MEASURE_MIN_PASSES
    assert sum(counts) >= 5_000 * n_bins > sum(counts[:-1])
    # The first pass always runs; none that would go past the event cap (a large trace: one pass).
    monkeypatch.setattr(generate, "MEASURE_MAX_EVENTS", 100)
    assert len(passes()) == 1


def test_stored_curves_reach_constant_and_curve_targets_without_a_pilot(measured, sampler_runs):
    natural = float(measured[0].model_rate_curves[:, 1:5].sum(0).mean())
    off = distorted(measured, FACTORS)
    # This small model is bursty: 20 minutes of it vary by ~6 % (sd over seeds) at the natural rate;
    # runs on the distorted curves land 0-10 % high (rows are planned on the empirical curves, and
    # the model's rate depends a little on where in its row an event lies), so 15 % is ~2 sd beyond.
    target = 2.0 * natural
    for seed in (0, 1):
        sampler_runs.clear()
        got = len(sample(off, seed, rate=target)) / 1200.0
        assert got == pytest.approx(target, rel=0.15), (seed, got, target)
        assert len(sampler_runs) == 1  # the result only: no pilot
    # A ramp from 1x to 4x the natural rate: each half within 20 % of the curve's mean there (sd 5-6 %).
    trace = sample(off, 0, rate=f"curve:0={natural:.4f},1200={4 * natural:.4f}")
    per_half = np.bincount((trace["timestamp"].to_numpy() // 600.0).astype(int), minlength=2) / 600.0
    np.testing.assert_allclose(per_half, natural * np.array([1.75, 3.25]), rtol=0.2)


def test_without_stored_curves_a_pilot_reaches_the_target(model, sampler_runs):
    natural = natural_rate(model)
    off = distorted(model, FACTORS)
    assert off[0].model_rate_curves is None
    sampler_runs.clear()
    target = 2.0 * natural
    for seed in (0, 1):
        got = len(sample(off, seed, rate=target)) / 1200.0
        assert got == pytest.approx(target, rel=0.15), (seed, got, target)
    assert len(sampler_runs) == 4  # a pilot and the result each


@pytest.mark.parametrize(
    ("rate", "runs"), [("natural", 1), ("scale:2", 1), ("3", 2), ("curve:0=1,1200=3", 2)]
)
def test_only_constant_and_curve_targets_need_a_pilot(model, sampler_runs, rate, runs):
    # natural and scale:K multiply the model's own rate: nothing to measure.
    sample(model, rate=rate)
    assert len(sampler_runs) == runs


def test_calibrated_sampling_is_deterministic(model, measured):
    for m in (model, measured):
        a, b, c = (sample(m, seed, rate=5) for seed in (4, 4, 5))
        assert a.equals(b) and not a.equals(c)


@pytest.mark.parametrize("stored", [True, False])
def test_a_target_where_the_curves_are_all_idle_still_gets_traffic(model, measured, stored):
    # Empirical curves zero over the whole window: rate control on them alone sends nothing at all.
    off = distorted(measured if stored else model, (1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    got = len(sample(off, rate=4)) / 1200.0
    assert got == pytest.approx(4.0, rel=0.15)


@pytest.mark.parametrize("stored", [True, False])
def test_a_model_that_sends_nothing_misses_the_target_at_a_bounded_cost(model, stored):
    # Gaps e^12 times the learned ones: the model sends (almost) nothing where the curves expect traffic.
    state, _ = model
    weights = {**state.weights, "gap_log_mean": state.weights["gap_log_mean"] + 12.0}
    silent = with_fields(state, weights=weights), NumpyTPP(state.model, weights, state.max_count)
    t0 = time.perf_counter()
    if stored:
        curves = measure_rate_curves(*silent, np.random.default_rng(0), SEGMENT_EVENTS, WARMUP_EVENTS)
        silent = with_fields(silent[0], model_rate_curves=curves), silent[1]
    out = sample(silent, rate=5)
    # 6,000 requests asked for; only the model's zero-gap bursts (its point mass at 0) remain.
    assert len(out) < 600 and time.perf_counter() - t0 < 10.0


def test_new_clients_reach_a_constant_target(measured, sampler_runs):
    # New clients' rates are not known in advance: a pilot, even with stored curves.
    got = len(sample(measured, rate=6, clients="new:5")) / 1200.0
    assert got == pytest.approx(6.0, rel=0.15)
    assert len(sampler_runs) == 2


def test_natural_rates_read_the_stored_curves(measured, sampler_runs):
    state, tpp = distorted(measured, FACTORS)
    spec = GenerationSpec.from_values(duration_s=1200.0, start_s=300.0, rate=10, clients="c1,c0")
    rates = natural_rates(state, tpp, spec, np.random.default_rng(0), SEGMENT_EVENTS, WARMUP_EVENTS)
    index = [state.client_ids.index(c) for c in ("c1", "c0")]
    np.testing.assert_allclose(rates.to_numpy(), state.model_rate_curves[index, 1:5].mean(1), rtol=1e-6)
    assert list(rates.index) == ["c1", "c0"] and not sampler_runs


def test_natural_rates_without_stored_curves_measure_the_models_own_rate(model):
    state, tpp = distorted(model, FACTORS)
    spec = GenerationSpec.from_values(duration_s=1200.0, start_s=300.0, rate=10)
    rates = natural_rates(state, tpp, spec, np.random.default_rng(0), SEGMENT_EVENTS, WARMUP_EVENTS)
    assert list(rates.index) == state.client_ids and (rates >= 0).all()
    measured = [sample(model, seed)["client_id"].value_counts() / 1200.0 for seed in range(1, 7)]
    mean = sum(m.reindex(state.client_ids, fill_value=0.0) for m in measured) / len(measured)
    assert rates.sum() == pytest.approx(mean.sum(), rel=0.15)
    # The heaviest client of the samples is the heaviest in the estimate too.
    assert rates.idxmax() == mean.idxmax()
