"""The conversation model: roles, fitting, fallback, sampling of follow-ups, upsampling plans, likelihood, files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from servegen_ml.conversations.empirical import ConversationModel, conversation_roles
from servegen_ml.conversations.fit import ConversationFitter, fit_conversations
from servegen_ml.conversations.likelihood import conversation_log_prob
from servegen_ml.conversations.sampling import (
    assemble_conversations,
    sample_follow_ups,
    upsample_plan,
    with_burn_in,
)
from servegen_ml.core.spec import DAY_S, GenerationSpec
from servegen_ml.trace.schema import make_trace
from servegen_ml.trace.validate import validate_trace
from tests.factories import conversational_trace, synthetic_trace

PLANTED_CONTINUATION = {"c0": 0.55, "c1": 0.35, "c2": 0.65}

_CACHE: dict = {}


def fitted() -> tuple[pd.DataFrame, ConversationModel]:
    if "model" not in _CACHE:
        trace = conversational_trace(seed=0)
        _CACHE["model"] = (trace, ConversationModel().fit(trace))
    return _CACHE["model"]


def constant_marks(output_tokens: int = 100):
    """A follow_up_marks callback that gives every follow-up the same output."""

    def marks(context, rng):
        return {"output_tokens": np.full(len(context.client_ids), output_tokens, dtype=np.int64)}, {}

    return marks


# ---------------------------------------------------------------- roles


def test_roles_follow_arrival_order_within_each_conversation():
    trace = conversational_trace(seed=1, duration_s=3600.0)
    roles = conversation_roles(trace)
    # The planted turns are in arrival order, so positions are the planted turns.
    np.testing.assert_array_equal(roles.position, trace["turn"].to_numpy())
    follow = np.flatnonzero(roles.predecessor >= 0)
    ids = trace["conversation_id"].to_numpy(dtype=object)
    assert (ids[roles.predecessor[follow]] == ids[follow]).all()
    assert (trace["turn"].to_numpy()[roles.predecessor[follow]] == trace["turn"].to_numpy()[follow] - 1).all()
    assert roles.is_last.sum() == len(np.unique(ids))


def test_rows_without_ids_are_conversations_of_one():
    trace = make_trace(
        {
            "timestamp": [0.0, 1.0, 2.0, 3.0, 4.0],
            "client_id": ["a"] * 5,
            "input_tokens": [10, 20, 30, 40, 50],
            "output_tokens": [1, 1, 1, 1, 1],
            "conversation_id": ["x", "", "x", "y", "x"],
        }
    )
    trace.loc[3, "conversation_id"] = pd.NA
    roles = conversation_roles(trace)
    np.testing.assert_array_equal(roles.predecessor, [-1, -1, 0, -1, 2])
    np.testing.assert_array_equal(roles.position, [1, 1, 2, 1, 3])
    np.testing.assert_array_equal(roles.opener_row, [0, 1, 0, 3, 0])
    np.testing.assert_array_equal(roles.is_last, [False, True, False, True, True])


def test_a_trace_without_follow_ups_has_no_conversation_model():
    trace = synthetic_trace(seed=0, duration_s=600.0, n_clients=2)
    openers, model = fit_conversations(trace)
    assert model is None and openers is trace
    with pytest.raises(ValueError, match="no follow-up"):
        ConversationModel().fit(trace)


# ---------------------------------------------------------------- fitting


def test_fit_recovers_planted_continuation_per_client():
    _, model = fitted()
    for client, planted in PLANTED_CONTINUATION.items():
        code = model.client_codes([client])
        h = model.continue_prob(model.hazard_group(code), np.array([1]))[0]
        # About 270-830 conversations per client: 3 standard errors is below 0.09.
        assert abs(h - planted) < 0.09, (client, h)


def test_sparse_client_falls_back_to_the_pooled_hazard():
    _, model = fitted()
    summary = model.summary_.set_index("client_id")
    assert summary.loc["tiny", "conversations"] < model.min_conversations
    assert not summary.loc["tiny", "own_hazard"] and summary.loc["c0", "own_hazard"]
    tiny, pooled = model.client_codes(["tiny", "never-seen"])
    assert model.hazard_group(np.array([tiny, pooled])).tolist() == [model.population] * 2
    assert pooled == model.population


def test_gap_is_conditioned_on_the_previous_output():
    _, model = fitted()
    rng = np.random.default_rng(0)
    code = np.zeros(20_000, dtype=np.int64)
    short = model.sample_gap_s(code, np.full(len(code), 30), rng)
    long = model.sample_gap_s(code, np.full(len(code), 600), rng)
    # Planted medians: 20 + 0.1 * output seconds, over each bucket's outputs (edges near 91, 145, 235 tokens).
    assert 20.0 < np.median(short) < 32.0
    assert np.median(long) > 1.6 * np.median(short)


def test_new_tokens_are_the_prompt_growth_beyond_the_previous_turn():
    _, model = fitted()
    new = model.sample_new_tokens(np.zeros(20_000, dtype=np.int64), np.random.default_rng(0))
    assert abs(np.median(new) - np.exp(4.0)) < 6.0  # planted log-normal median 54.6


def test_gap_weight_undoes_end_of_trace_censoring():
    t = np.linspace(0.0, 1000.0, 100_001)
    fitter = ConversationFitter()
    ones = np.ones(len(t), dtype=np.int64)
    fitter.add(pd.DataFrame({"timestamp": t, "client_id": "c", "input_tokens": ones, "output_tokens": ones}))
    weight = fitter._gap_weight(fitter.t_max + 1e-3, np.array([0.0, 500.0, 900.0, 999.99]))
    np.testing.assert_allclose(weight[:3], [1.0, 2.0, 10.0], rtol=1e-3)
    assert weight[3] == 10.0  # capped


# ---------------------------------------------------------------- sampling


def _openers(n: int, clients=("c0",)) -> pd.DataFrame:
    return make_trace(
        {
            "timestamp": np.linspace(0.0, 100.0, n),
            "client_id": np.resize(np.asarray(clients, dtype=object), n),
            "input_tokens": np.full(n, 1000),
            "output_tokens": np.full(n, 200),
        }
    )


def test_follow_ups_grow_the_prompt_and_stay_inside_the_horizon():
    _, model = fitted()
    openers = _openers(2000, ("c0", "c1"))
    follow = sample_follow_ups(model, openers, 300.0, 0.0, constant_marks(100), np.random.default_rng(0))
    assert len(follow.timestamp) > 500
    assert (follow.timestamp < 300.0).all()
    trace = assemble_conversations(openers, follow)
    validate_trace(trace)
    roles = conversation_roles(trace)
    f = np.flatnonzero(~roles.is_opener)
    p = roles.predecessor[f]
    inp, out = trace["input_tokens"].to_numpy(), trace["output_tokens"].to_numpy()
    assert (inp[f] >= inp[p] + out[p]).all()
    assert (trace["client_id"].to_numpy()[f] == trace["client_id"].to_numpy()[p]).all()
    np.testing.assert_array_equal(trace["turn"].to_numpy(), roles.position)


def test_follow_ups_are_reproducible_and_seed_dependent():
    _, model = fitted()
    openers = _openers(500)

    def run(seed):
        follow = sample_follow_ups(model, openers, 1e4, 0.0, constant_marks(), np.random.default_rng(seed))
        return assemble_conversations(openers, follow)

    pd.testing.assert_frame_equal(run(3), run(3))
    assert not run(3).equals(run(4))


def test_sampled_turns_follow_the_hazard():
    _, model = fitted()
    openers = _openers(20_000)
    follow = sample_follow_ups(model, openers, 1e9, 0.0, constant_marks(), np.random.default_rng(0))
    turns = np.bincount(follow.conversation, minlength=len(openers)) + 1
    expected = model.mean_turns(["c0"], [1.0])
    assert abs(turns.mean() - expected) < 0.03
    assert (
        abs(np.mean(turns >= 2) - model.continue_prob(model.client_codes(["c0"]), np.array([1]))[0]) < 0.015
    )


# ---------------------------------------------------------------- upsampling plans


def test_upsample_plan_scale():
    spec = GenerationSpec.from_values(duration_s=600.0, start_s=60.0, rate="scale:4")
    keep = upsample_plan(spec)
    assert keep.time_factor == 1.0 and keep.opener_spec == spec
    compress = upsample_plan(
        GenerationSpec.from_values(duration_s=600.0, start_s=60.0, rate="scale:4", upsample="compress")
    )
    assert compress.time_factor == 4.0
    assert compress.opener_spec.duration_s == 2400.0 and compress.opener_spec.rate.kind == "natural"
    assert compress.opener_spec.start_s == 60.0


def test_upsample_plan_constant_and_curve_account_for_follow_ups():
    spec = GenerationSpec.from_values(duration_s=600.0, rate=10.0)
    plan = upsample_plan(spec, requests_per_opener=2.0, natural_rate_s=5.0)
    assert plan.time_factor == 1.0 and plan.opener_spec.rate.value == pytest.approx(5.0)
    spec = GenerationSpec.from_values(duration_s=600.0, rate=10.0, upsample="compress")
    plan = upsample_plan(spec, requests_per_opener=2.0, natural_rate_s=5.0)
    # Twice the natural rate: 1200 s of natural traffic at 10 / (2 * 2) openers per stretched second.
    assert plan.time_factor == pytest.approx(2.0)
    assert plan.opener_spec.duration_s == pytest.approx(1200.0)
    assert plan.opener_spec.rate.value == pytest.approx(2.5)
    spec = GenerationSpec.from_values(duration_s=600.0, rate="curve:0=4,600=12", upsample="compress")
    plan = upsample_plan(spec, requests_per_opener=2.0, natural_rate_s=4.0)
    assert plan.time_factor == pytest.approx(2.0)  # mean target 8 req/s
    assert plan.opener_spec.rate.curve_t_s == (0.0, 1200.0)
    np.testing.assert_allclose(plan.opener_spec.rate.curve_rate, [1.0, 3.0])


def test_burn_in_wraps_before_the_timeline_start():
    spec = GenerationSpec.from_values(duration_s=600.0, start_s=100.0, rate="curve:0=1,600=2")
    plan = with_burn_in(upsample_plan(spec, 1.0, 1.0), burn_in_s=300.0, learned_span_s=2 * DAY_S)
    assert plan.opener_spec.start_s == DAY_S - 200.0
    assert plan.opener_spec.duration_s == 900.0 and plan.burn_in_s == 300.0
    assert plan.opener_spec.rate.curve_t_s == (300.0, 900.0)
    late = with_burn_in(upsample_plan(GenerationSpec(duration_s=60.0, start_s=500.0), 1.0), 300.0, 2 * DAY_S)
    assert late.opener_spec.start_s == 200.0


# ---------------------------------------------------------------- likelihood


def test_conversation_log_prob_of_turn_counts_is_the_hazard_pmf():
    _, model = fitted()
    trace = make_trace(
        {
            "timestamp": [0.0, 30.0, 70.0],
            "client_id": ["c0"] * 3,
            "input_tokens": [100, 300, 500],
            "output_tokens": [150, 150, 150],
            "conversation_id": ["a"] * 3,
        }
    )
    lp = conversation_log_prob(model, trace, window_end_s=1e9)
    h = model.continue_prob(model.client_codes(["c0"] * 3), np.array([1, 2, 3]))
    code = model.client_codes(["c0", "c0"])
    gaps = model.log_gap(code, np.array([150, 150]), np.array([30.0, 40.0]))
    new = model.log_new_tokens(code, np.array([50, 50]))
    expected = np.log(h[0] * h[1] * (1.0 - h[2])) + gaps.sum() + new.sum()
    assert lp.sum() == pytest.approx(expected)
    assert (lp <= 0).all()


def test_conversation_log_prob_prefers_the_fitted_process():
    _, model = fitted()
    held_out = conversational_trace(seed=5, duration_s=7200.0)
    slow = held_out.copy()
    roles = conversation_roles(held_out)
    # Stretch every conversation's later turns away from its opener (gaps x 5).
    t = held_out["timestamp"].to_numpy()
    slow["timestamp"] = t[roles.opener_row] + 5.0 * (t - t[roles.opener_row])
    end = float(slow["timestamp"].max()) + 1.0
    real = conversation_log_prob(model, held_out, end)
    stretched = conversation_log_prob(model, slow, end)
    assert np.isfinite(real).all() and np.isfinite(stretched).all()
    assert real.mean() > stretched.mean() + 0.5


# ---------------------------------------------------------------- files


def test_save_load_round_trip_is_readable_and_exact(tmp_path):
    trace, model = fitted()
    model.write_into(tmp_path)
    meta = json.loads((tmp_path / "conversations.json").read_text())
    assert meta["clients"] == ["c0", "c1", "c2", "tiny"] and meta["burn_in_s"] > 0
    assert not list(tmp_path.glob("*.pkl"))
    loaded = ConversationModel.load(tmp_path)
    pd.testing.assert_frame_equal(loaded.values_, model.values_)
    end = float(trace["timestamp"].max()) + 1.0
    np.testing.assert_array_equal(
        conversation_log_prob(loaded, trace, end), conversation_log_prob(model, trace, end)
    )
    openers = _openers(300, ("c0", "tiny"))
    a = sample_follow_ups(model, openers, 1e4, 0.0, constant_marks(), np.random.default_rng(1))
    b = sample_follow_ups(loaded, openers, 1e4, 0.0, constant_marks(), np.random.default_rng(1))
    np.testing.assert_array_equal(a.timestamp, b.timestamp)
    np.testing.assert_array_equal(a.ints["input_tokens"], b.ints["input_tokens"])
