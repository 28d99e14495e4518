"""The neural sampler's natural rate is the model's rate level, so rate targets scale it exactly.

The fixture is a small untrained model (random heads) made bursty on purpose
(a third of its gaps simultaneous, components far apart): whatever shape the
gaps take, their mean is pinned to 1 in unit time, so the natural rate is the
rate level integrated over the window, per client, with no measurement.
"""

import numpy as np
import pytest
import torch

from servegen_ml.core.spec import GenerationSpec
from servegen_ml.neural.data.events import store_from_frame
from servegen_ml.neural.data.normalizers import fit_normalizers, rate_curves
from servegen_ml.neural.model.tpp import MarkedTPP
from servegen_ml.neural.rate_level import fit_rate_level, unit_clock
from servegen_ml.neural.sampling.generate import natural_rates, sample_trace
from servegen_ml.neural.sampling.numpy_tpp import NumpyTPP
from servegen_ml.neural.state import NeuralState
from tests.factories import synthetic_trace

SPAN_S, BIN_S = 1800.0, 300.0
SEGMENT_EVENTS, WARMUP_EVENTS = 64, 8
START_S, DURATION_S = 300.0, 1200.0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    store = store_from_frame(synthetic_trace(seed=3, duration_s=SPAN_S, n_clients=3))
    curves = rate_curves(store, BIN_S, SPAN_S)
    level = fit_rate_level(curves, BIN_S, SPAN_S)
    norm = fit_normalizers(store, unit_clock(level, BIN_S, SPAN_S))
    kwargs = {
        "n_clients": 3, "layout": store.layout.to_dict(), "spikes": norm.spikes, "hidden": 8, "embedding": 4,
        "head_hidden": 8, "time_components": 2, "mark_components": 2, "activity_bins": 6, "activity_bin_s": BIN_S,
    }  # fmt: skip
    tpp = MarkedTPP(**kwargs)
    tpp.set_normalizers(norm)
    tpp.set_activity(curves, SPAN_S)
    tpp.set_rate_level(level)
    with torch.no_grad():  # bursty: P(gap = 0) ~ 1/3, log-normal components 5 apart, history-dependent
        out = tpp.heads.out["time"]
        out.weight.add_(0.5 * torch.randn_like(out.weight))
        out.bias[0] = -0.7
        out.bias[3:5] = torch.tensor([-2.5, 2.5])
    weights = {k: v.numpy().copy() for k, v in tpp.state_dict().items()}
    state = NeuralState(
        kwargs, weights, norm.max_count, {}, list(store.client_ids), store.counts.astype(np.int64),
        curves, BIN_S, 0.0, SPAN_S, {},
    )  # fmt: skip
    return state, NumpyTPP(kwargs, weights, norm.max_count)


def sample(model, rng_seed=0, **spec):
    state, tpp = model
    spec = GenerationSpec.from_values(**{"duration_s": DURATION_S, "start_s": START_S, **spec})
    return sample_trace(state, tpp, spec, np.random.default_rng(rng_seed), SEGMENT_EVENTS, WARMUP_EVENTS)


def with_level(model, factor):
    state, _ = model
    weights = {**state.weights, "rate_level": state.weights["rate_level"] * factor}
    return NeuralState(**{**state.__dict__, "weights": weights}), NumpyTPP(
        state.model, weights, state.max_count
    )


def level_events(model) -> np.ndarray:
    """Each client's expected events over the window: its rate level integrated (bins 1-4)."""
    return model[0].weights["rate_level"][:, 1:5].sum(1) * BIN_S


def test_the_fixture_is_bursty(model):
    gaps = np.diff(np.sort(sample(model).query("client_id == 'c0'")["timestamp"].to_numpy()))
    assert np.mean(gaps == 0) > 0.2 and gaps.std() / gaps.mean() > 1.5


def test_the_natural_rate_is_the_rate_level_per_client(model):
    counts = [sample(model, seed)["client_id"].value_counts() for seed in range(6)]
    mean = sum(c.reindex(model[0].client_ids, fill_value=0) for c in counts) / len(counts)
    np.testing.assert_allclose(mean.to_numpy(), level_events(model), rtol=0.12)
    # A level three times higher: three times the traffic, the model otherwise unchanged.
    tripled = np.mean([len(sample(with_level(model, 3.0), seed)) for seed in range(3)])
    assert tripled == pytest.approx(3.0 * level_events(model).sum(), rel=0.1)


def test_constant_and_curve_targets_scale_the_level(model):
    natural = level_events(model).sum() / DURATION_S
    target = 2.0 * natural
    for seed in (0, 1):
        assert len(sample(model, seed, rate=target)) / DURATION_S == pytest.approx(target, rel=0.1)
    trace = sample(model, 0, rate=f"curve:0={natural:.4f},1200={4 * natural:.4f}")
    per_half = np.bincount((trace["timestamp"].to_numpy() // 600.0).astype(int), minlength=2) / 600.0
    np.testing.assert_allclose(per_half, natural * np.array([1.75, 3.25]), rtol=0.15)


def test_sampling_is_deterministic(model):
    a, b, c = (sample(model, seed, rate=5) for seed in (4, 4, 5))
    assert a.equals(b) and not a.equals(c)


def test_new_clients_reach_a_constant_target(model):
    got = np.mean([len(sample(model, seed, rate=6, clients="new:5")) for seed in (0, 1)]) / DURATION_S
    assert got == pytest.approx(6.0, rel=0.12)


def test_natural_rates_are_the_level_over_the_window(model):
    state, tpp = model
    spec = GenerationSpec.from_values(duration_s=DURATION_S, start_s=START_S, rate=10, clients="c1,c0")
    rates = natural_rates(state, tpp, spec, np.random.default_rng(0))
    index = [state.client_ids.index(c) for c in ("c1", "c0")]
    np.testing.assert_allclose(rates.to_numpy(), level_events(model)[index] / DURATION_S, rtol=1e-9)
    assert list(rates.index) == ["c1", "c0"]


def with_offsets(model, offsets):
    state, _ = model
    weights = {**state.weights, "heads.client_offsets.weight": offsets.astype(np.float32)}
    return NeuralState(**{**state.__dict__, "weights": weights}), NumpyTPP(
        state.model, weights, state.max_count
    )


def test_a_clients_head_offsets_move_its_lengths_only(model):
    state, tpp = model
    offsets = np.zeros_like(state.weights["heads.client_offsets.weight"])
    lo, _ = tpp.slices["input"]
    spikes = len(tpp.spikes["input"]) + 1
    offsets[0, lo : lo + spikes - 1] = -30.0  # no spikes for client 0 ...
    offsets[0, lo + spikes + tpp.km : lo + spikes + 2 * tpp.km] = 3.0  # ... and components 3 std higher
    before, after = sample(model, 0, rate=5), sample(with_offsets(model, offsets), 0, rate=5)
    ratio = (
        after.groupby("client_id")["input_tokens"].median()
        / before.groupby("client_id")["input_tokens"].median()
    )
    c0 = state.client_ids[0]
    assert ratio[c0] > 5.0
    assert ratio.drop(c0).between(0.8, 1.25).all()


def test_new_clients_copy_every_part_of_real_clients(model):
    from servegen_ml.core.clients import new_client_sources
    from servegen_ml.core.spec import ClientSpec
    from servegen_ml.neural.sampling.generate import select_clients

    state, _ = model
    offsets = np.random.default_rng(0).normal(size=state.weights["heads.client_offsets.weight"].shape)
    moved, _ = with_offsets(model, offsets)
    n = 2 * len(state.client_ids) + 1
    table, names = select_clients(moved, ClientSpec.parse(f"new:{n}"), np.random.default_rng(1))
    source = new_client_sources(len(state.client_ids), n, np.random.default_rng(1))
    assert names == [f"new-{i}" for i in range(n)]
    w = moved.weights
    for got, key in [
        (table.embedding, "embedding.weight"), (table.gap_mean, "gap_log_mean"),
        (table.gap_std, "gap_log_std"), (table.activity, "activity"),
        (table.level, "rate_level"), (table.offsets, "heads.client_offsets.weight"),
    ]:  # fmt: skip
        np.testing.assert_array_equal(got, np.asarray(w[key])[source].astype(got.dtype), err_msg=key)
    # Every client copied twice, one of them three times: a random set of clients, not of requests.
    assert sorted(np.bincount(source).tolist()) == [2] * (len(state.client_ids) - 1) + [3]
