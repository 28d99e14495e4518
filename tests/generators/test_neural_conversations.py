"""The neural generator's conversations beyond the shared suite: heads' likelihood, follow-up marks, files.

tests/generators/test_conversation_generation.py runs the fidelity and
upsampling tolerances over every generator, neural included; here: the heads'
censored likelihood against scipy, their samplers against their own
probabilities, follow-up marks scored with the distribution they are drawn
from, multimodal and reasoning follow-ups, unseen clients, and the checkpoint.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from servegen_ml.conversations.empirical import conversation_roles
from servegen_ml.conversations.neural.heads import ConversationHeads
from servegen_ml.conversations.neural.model import NeuralConversationModel
from servegen_ml.conversations.neural.numpy_heads import NumpyConversationHeads
from servegen_ml.conversations.sampling import FollowUpContext
from servegen_ml.conversations.turns import Turns
from servegen_ml.core.spec import TIME_RESOLUTION_S, GenerationSpec
from servegen_ml.generators.base import load_generator
from servegen_ml.generators.neural import NeuralGenerator
from servegen_ml.neural import features as F
from servegen_ml.trace.schema import make_list_column
from servegen_ml.trace.validate import validate_trace
from tests.factories import conversational_trace, multimodal_conversational_trace

TINY = {"hidden": 16, "embedding": 4, "head_hidden": 16, "time_components": 3, "mark_components": 3}
FAST = {"accelerator": "cpu", "devices": 1, "max_epochs": 2, "default_root_dir": None, "num_threads": 1}
NORM = {
    "gap_log_mean": 3.5,
    "gap_log_std": 0.8,
    "gap_zero_share": 0.01,
    "gap_quantum_s": 0.0,
    "gap_jitter_ms": [],
    "gap_jitter_prob": [],
    "new_mean": 4.0,
    "new_std": 1.0,
    "new_tokens_spikes": [0, 7],
    "new_tokens_spike_shares": [0.1, 0.05],
    "output_mean": 5.0,
    "output_std": 0.7,
    "output_spikes": [100],
    "output_spike_shares": [0.2],
}


def random_heads(seed: int = 0, norm: dict = NORM) -> ConversationHeads:
    torch.manual_seed(seed)
    heads = ConversationHeads(
        n_features=5, hidden=8, time_components=2, mark_components=2, n_spikes=2, n_output_spikes=1,
        n_jitter=len(norm["gap_jitter_ms"]),
    )  # fmt: skip
    heads.set_normalizers(norm, continue_rate=0.4)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return heads.eval()


def numpy_heads(heads: ConversationHeads, max_new_tokens: int = 100_000) -> NumpyConversationHeads:
    weights = {k: v.numpy() for k, v in heads.state_dict().items()}
    return NumpyConversationHeads(weights, 2, 2, max_new_tokens, max_new_tokens)


def scipy_parts(heads: ConversationHeads, x: np.ndarray):
    """(h, gap mixture (zero prob, weights, loc, scale), new-token mixture) per row, from the raw outputs."""
    with torch.no_grad():
        outputs = heads(torch.from_numpy(x), torch.zeros(len(x), 2))
        logit, gap_raw, new_raw = (t.double().numpy() for t in outputs[:3])
    h = 1 / (1 + np.exp(-logit))
    p0 = 1 / (1 + np.exp(-gap_raw[:, 0]))
    w = np.exp(gap_raw[:, 1:3]) / np.exp(gap_raw[:, 1:3]).sum(1, keepdims=True)
    loc = NORM["gap_log_mean"] + NORM["gap_log_std"] * gap_raw[:, 3:5]
    scale = NORM["gap_log_std"] * np.exp(gap_raw[:, 5:7])
    return h, (p0, w, loc, scale), new_raw


def test_censored_likelihood_matches_scipy():
    heads = random_heads()
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    h, (p0, w, loc, scale), _ = scipy_parts(heads, x)
    gap = np.array([30.0, 2.0, 400.0, 55.5, 0.0, 9.0])
    censor = np.array([10.0, 100.0, 1.0, 0.0, 500.0, 60.0])
    followed = np.array([True, True, False, False, False, True])
    new = np.array([0, 55, 0, 0, 0, 7])
    output = np.array([100, 3, 0, 0, 0, 250])
    condition = np.random.default_rng(1).standard_normal((6, 2)).astype(np.float32)
    with torch.no_grad():
        lp = heads.log_likelihood(
            torch.from_numpy(x), torch.from_numpy(condition), torch.from_numpy(followed), torch.from_numpy(gap),
            torch.from_numpy(new), torch.from_numpy(output), torch.from_numpy(censor),
        ).numpy()  # fmt: skip
    np_heads = numpy_heads(heads)
    log_new = np_heads.log_new_tokens(x, new)
    log_output = np_heads.log_output(x, condition, output)
    for i in range(len(x)):

        def cdf(g, i=i):
            return (w[i] * stats.norm.cdf((np.log(g) - loc[i]) / scale[i])).sum()

        bin_mass = (1 - p0[i]) * (cdf(gap[i] + TIME_RESOLUTION_S) - cdf(gap[i]))
        survival = 1.0 if censor[i] <= 0 else (1 - p0[i]) * (1 - cdf(censor[i]))
        if followed[i]:
            expected = np.log(h[i]) + np.log(bin_mass) + log_new[i] + log_output[i]
        else:
            expected = np.log((1 - h[i]) + h[i] * survival)
        assert lp[i] == pytest.approx(expected, rel=1e-5, abs=1e-6), i


def test_new_token_log_prob_matches_scipy_and_sums_to_one():
    heads = random_heads(1)
    x = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    _, _, raw = scipy_parts(heads, x)
    n = np.arange(0, 20_000)
    np_heads = numpy_heads(heads)
    for i in range(len(x)):
        lp = np_heads.log_new_tokens(np.repeat(x[i : i + 1], len(n), axis=0), n)
        assert np.exp(lp).sum() == pytest.approx(1.0, abs=2e-3)
        pi = np.exp(raw[i, :3]) / np.exp(raw[i, :3]).sum()
        cw = np.exp(raw[i, 3:5]) / np.exp(raw[i, 3:5]).sum()
        cl, cs = NORM["new_mean"] + NORM["new_std"] * raw[i, 5:7], NORM["new_std"] * np.exp(raw[i, 7:9])
        k = 300
        edges = np.log([k + 0.5, k + 1.5])
        cont = (cw * (stats.norm.cdf((edges[1] - cl) / cs) - stats.norm.cdf((edges[0] - cl) / cs))).sum()
        floor, base_loc, base_log_scale = F.count_floor(NORM["new_mean"], NORM["new_std"])
        base = np.diff(stats.norm.cdf(edges, base_loc, np.exp(base_log_scale)))[0]
        expected = (1 - floor) * pi[2] * cont + floor * base
        assert lp[k] == pytest.approx(np.log(expected), rel=1e-6)
        assert np.exp(lp[7]) > (1 - floor) * pi[1]  # the spike at 7


def test_numpy_samplers_follow_the_heads_distributions():
    heads = random_heads(2)
    np_heads = numpy_heads(heads)
    x = np.repeat(np.random.default_rng(2).standard_normal((1, 5)).astype(np.float32), 20_000, axis=0)
    with torch.no_grad():
        logit = heads(torch.from_numpy(x[:1]), torch.zeros(1, 2))[0].double().numpy()
    np.testing.assert_allclose(np_heads.continue_prob(x[:1]), 1 / (1 + np.exp(-logit)), rtol=1e-5)
    rng = np.random.default_rng(0)
    gaps = np_heads.sample_gap_s(x, rng)
    for q in np.quantile(gaps[gaps > 0], [0.1, 0.5, 0.9]):
        model_sf = np.exp(np_heads.log_sf_gap(x[:1], np.array([q])))[0]
        assert np.mean(gaps >= q) == pytest.approx(model_sf, abs=0.012)
    new = np_heads.sample_new_tokens(x, rng)
    values = np.arange(0, 200_000)
    pmf = np.exp(np_heads.log_new_tokens(np.repeat(x[:1], len(values), axis=0), values))
    for q in np.quantile(new, [0.2, 0.5, 0.8]):
        assert np.mean(new <= q) == pytest.approx(pmf[: int(q) + 1].sum(), abs=0.012)
    condition = np.tile(np.array([[0.5, -1.0]], dtype=np.float32), (len(x), 1))
    output = np_heads.sample_output(x, condition, rng)
    rows = np.repeat(x[:1], len(values), axis=0)
    pmf = np.exp(np_heads.log_output(rows, condition[:1].repeat(len(values), 0), values))
    assert pmf.sum() == pytest.approx(1.0, abs=2e-3) and np.mean(output == 100) == pytest.approx(
        pmf[100], abs=0.012
    )
    for q in np.quantile(output, [0.2, 0.5, 0.8]):
        assert np.mean(output <= q) == pytest.approx(pmf[: int(q) + 1].sum(), abs=0.012)


def test_lattice_gaps_are_a_proper_distribution_sampled_as_scored():
    norm = {**NORM, "gap_quantum_s": 3.0, "gap_jitter_ms": [-1, 0, 2], "gap_jitter_prob": [0.3, 0.65, 0.05]}
    np_heads = numpy_heads(random_heads(3, norm))
    x = np.random.default_rng(3).standard_normal((1, 5)).astype(np.float32)
    k = np.arange(0, 20_000)
    lattice = np.exp(np_heads.log_gap(np.repeat(x, len(k), axis=0), 3.0 * k))
    jitter = np.array([0.3, 0.65, 0.05])
    # P(k) * P(j = 0) per slot; slots and seen jitters hold all but the floor's share off them.
    floor = 1e-3
    on_seen = (1 - floor) * jitter + floor / 3000
    assert lattice.sum() / on_seen[1] == pytest.approx(1.0, abs=2e-3)
    gaps = np_heads.sample_gap_s(np.repeat(x, 50_000, axis=0), np.random.default_rng(0))
    slot = np.floor(gaps / 3.0 + 0.5)
    jitter_ms = np.round((gaps - 3.0 * slot) * 1000).astype(np.int64)
    assert np.isin(jitter_ms, [-1, 0, 2]).mean() > 0.995
    assert np.mean(jitter_ms == -1) == pytest.approx(0.3, abs=0.01)
    for q in np.quantile(slot, [0.25, 0.5, 0.75]):
        assert np.mean(slot <= q) == pytest.approx(lattice[: int(q) + 1].sum() / on_seen[1], abs=0.012)
    # The survival counts whole slots: a gap of at least 4 s is one of at least 2 slots.
    assert np.exp(np_heads.log_sf_gap(x, np.array([4.0])))[0] == pytest.approx(np.mean(slot >= 2), abs=0.01)


# ------------------------------------------------------------------ a fitted generator


@pytest.fixture(scope="module")
def fitted():
    trace = multimodal_conversational_trace()
    return NeuralGenerator(**TINY, chunk_len=32, lanes=16, trainer=FAST).fit(trace), trace


def test_point_process_learns_the_openers_and_heads_the_turns(fitted):
    gen, trace = fitted
    roles = conversation_roles(trace)
    assert int(gen.state_.traffic.sum()) == int(roles.is_opener.sum())
    model = gen.conversations_
    summary = model.meta["training"]
    assert summary["train_turns"] + summary["val_turns"] == len(trace)
    assert summary["batch_turns"] == 128 and summary["fit_seconds"] > 0  # the default for a small trace
    # One hour cannot show a daily cycle: no time-of-day inputs.
    assert model.norm["day_harmonics"] == 0 and model.norm["week_harmonics"] == 0
    assert 1.0 < model.mean_turns(["c0"], [1.0]) < 10.0 and model.burn_in_s_ > 0


def test_multimodal_and_reasoning_follow_ups(fitted):
    gen, trace = fitted
    out = gen.sample(GenerationSpec(duration_s=3600.0), np.random.default_rng(1))
    validate_trace(out)
    assert {"image_tokens", "text_tokens", "reasoning_tokens", "turn", "conversation_id"} <= set(out.columns)
    roles = conversation_roles(out)
    f = np.flatnonzero(~roles.is_opener)
    p = roles.predecessor[f]
    inp, outp = out["input_tokens"].to_numpy(), out["output_tokens"].to_numpy()
    assert len(f) > 50 and (inp[f] >= inp[p] + outp[p]).all()
    lp = gen.log_prob(trace)
    assert np.isfinite(lp.to_numpy()).all() and {"conversation", "image_tokens", "reasoning_tokens"} <= set(
        lp.columns
    )
    follow = ~conversation_roles(trace).is_opener
    assert (lp.loc[follow, ["time", "input_tokens"]].to_numpy() == 0).all()


def test_follow_up_marks_are_scored_with_the_distribution_they_are_drawn_from(fitted):
    gen, _ = fitted
    n_draws, prompt, gap_s, prev_s = 20_000, 3000, 45.0, 1200.0
    context = FollowUpContext(
        np.full(n_draws, "c0", dtype=object), np.full(n_draws, prev_s + gap_s),
        Turns(np.zeros(n_draws, dtype=np.int64), np.ones(n_draws, dtype=np.int64), np.full(n_draws, 100),
              np.full(n_draws, 50), np.full(n_draws, prev_s)),
        np.full(n_draws, prompt - 150), np.full(n_draws, prompt),
    )  # fmt: skip
    ints, lists = gen._follow_up_marks()(context, np.random.default_rng(0))
    assert (ints["input_tokens"] == np.maximum(prompt, np.bincount(
        np.repeat(np.arange(n_draws), lists["image_tokens"][0]), weights=lists["image_tokens"][1], minlength=n_draws
    ))).all()  # fmt: skip
    # Score output values 0..N-1 as follow-ups of one turn, with no items (text = the whole prompt).
    values = np.arange(0, 4000)
    rows = len(values)
    trace = pd.DataFrame(
        {
            "timestamp": np.r_[prev_s, np.full(rows, prev_s + gap_s)],
            "client_id": "c0",
            "input_tokens": np.r_[100, np.full(rows, prompt)],
            "output_tokens": np.r_[50, values],
            "text_tokens": np.r_[100, np.full(rows, prompt)],
            "image_tokens": make_list_column(np.zeros(rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)),
            "reasoning_tokens": np.r_[0, values // 2],
        }
    )
    before = Turns(
        np.zeros(rows, dtype=np.int64), np.ones(rows, dtype=np.int64), np.full(rows, 100), np.full(rows, 50),
        np.full(rows, prev_s),
    )  # fmt: skip
    scored = gen._log_prob_follow_ups(trace, np.arange(1, rows + 1), before, 1e5)
    no_items = lists["image_tokens"][0] == 0
    assert np.exp(scored["image_count"].to_numpy()[0]) == pytest.approx(no_items.mean(), abs=0.015)
    pmf = np.exp(scored["output_tokens"].to_numpy())
    drawn = ints["output_tokens"][no_items]
    for q in np.quantile(drawn, [0.25, 0.5, 0.75]):
        assert np.mean(drawn <= q) == pytest.approx(pmf[: int(q) + 1].sum(), abs=0.02)
    # The reasoning part of the most frequent drawn output o: every split 0..o scored, against the draws.
    o = int(np.bincount(drawn).argmax())
    split = trace.iloc[: o + 2].copy()
    split["output_tokens"] = np.r_[50, np.full(o + 1, o)]
    split["reasoning_tokens"] = np.r_[0, np.arange(o + 1)]
    part = gen._log_prob_follow_ups(split, np.arange(1, o + 2), before.take(np.arange(o + 1)), 1e5)
    reasoning_pmf = np.exp(part["reasoning_tokens"].to_numpy())
    got = ints["reasoning_tokens"][no_items & (ints["output_tokens"] == o)]
    assert len(got) > 100 and reasoning_pmf.sum() == pytest.approx(1.0, abs=1e-3)
    assert got.mean() == pytest.approx((np.arange(o + 1) * reasoning_pmf).sum(), abs=0.1 * o + 0.5)
    assert np.mean(got == 0) == pytest.approx(reasoning_pmf[0], abs=0.05)


def test_a_follow_up_past_the_learned_span_is_scored_on_its_own_gap(fitted):
    # Past the span the features read the phase inside it, but the heads condition on the unit gap
    # between the raw positions, as the sampler does (FollowUpMarks): a follow-up 45 s after a turn
    # 20 s before the span's end is not read as a gap of 0 (the positions wrapped apart).
    gen, _ = fitted
    prev_s = gen.state_.origin_s + gen.state_.span_s - 20.0
    trace = pd.DataFrame(
        {
            "timestamp": [prev_s, prev_s + 45.0, prev_s],
            "client_id": "c0",
            "input_tokens": [100, 400, 400],
            "output_tokens": [50, 60, 60],
            "text_tokens": [100, 400, 400],
            "image_tokens": make_list_column(np.zeros(3, dtype=np.int64), np.zeros(0, dtype=np.int64)),
            "reasoning_tokens": [0, 10, 10],
        }
    )
    before = Turns(np.zeros(2, dtype=np.int64), np.ones(2, dtype=np.int64), np.full(2, 100), np.full(2, 50),
                   np.full(2, prev_s))  # fmt: skip
    scored = gen._log_prob_follow_ups(trace, np.array([1, 2]), before, prev_s + 1e5)
    later, at_once = scored["image_count"].to_numpy()
    assert abs(later - at_once) > 1e-6


def test_new_clients_continue_conversations_as_the_mean_client(fitted):
    gen, _ = fitted
    out = gen.sample(GenerationSpec.from_values(duration_s=3600.0, clients="new:3"), np.random.default_rng(0))
    roles = conversation_roles(out)
    follow = np.flatnonzero(~roles.is_opener)
    client = out["client_id"].to_numpy()
    assert set(client) <= {"new-0", "new-1", "new-2"} and len(follow) > 0
    assert (client[follow] == client[roles.predecessor[follow]]).all()
    model = gen.conversations_
    assert model.client_codes(["new-0", "c0"]).tolist() == [model.population, 0]
    turns = Turns(
        np.array([model.population]), np.array([1]), np.array([500]), np.array([100]), np.array([60.0])
    )
    assert 0.0 < model.continue_prob_after(turns)[0] < 1.0


def test_checkpoint_holds_the_conversation_heads_readably(fitted, tmp_path):
    gen, trace = fitted
    ck = gen.save(tmp_path / "ck")
    names = {p.name for p in ck.iterdir()}
    assert {"conversation.safetensors", "conversation.json"} <= names
    assert not [n for n in names if n.endswith((".pkl", ".pt", ".ckpt"))]
    meta = json.loads((ck / "conversation.json").read_text())
    assert meta["format"] == "servegen_ml.neural_conversation_model" and meta["clients"] == list(gen.clients)
    loaded = load_generator(ck)
    for k, v in gen.conversations_.weights.items():
        np.testing.assert_array_equal(loaded.conversations_.weights[k], v)
    spec = GenerationSpec.from_values(duration_s=1800.0, rate="scale:2")
    pd.testing.assert_frame_equal(
        loaded.sample(spec, np.random.default_rng(4)), gen.sample(spec, np.random.default_rng(4))
    )
    pd.testing.assert_frame_equal(loaded.log_prob(trace), gen.log_prob(trace))
    (ck / "conversation.json").write_text("{}")
    with pytest.raises(ValueError, match="not a version"):
        NeuralConversationModel.load(ck)


def test_without_conversations_the_neural_generator_is_unchanged():
    trace = conversational_trace(seed=3, duration_s=1200.0).drop(columns=["conversation_id", "turn"])
    gen = NeuralGenerator(**TINY, chunk_len=32, lanes=16, trainer={**FAST, "max_epochs": 1}).fit(trace)
    assert gen.conversations_ is None
    out = gen.sample(GenerationSpec(duration_s=600.0), np.random.default_rng(0))
    assert "conversation_id" not in out.columns and "conversation" not in gen.log_prob(trace).columns


def test_conversation_heads_train_with_early_stopping_turned_off():
    # trainer.callbacks.early_stopping=null turns it off for the point process and the conversation heads.
    trace = conversational_trace(seed=3, duration_s=1200.0)
    trainer = {**FAST, "max_epochs": 2, "callbacks": {"early_stopping": None}}
    gen = NeuralGenerator(**TINY, chunk_len=32, lanes=16, conversation_batch=48, trainer=trainer).fit(trace)
    assert gen.conversations_.meta["training"]["epochs"] == 2
    assert gen.conversations_.meta["training"]["batch_turns"] == 48
