"""Conversations in every generator (issue 6): upsampling modes, fidelity to the training trace, contract.

Tolerances (fixture: four clients, 4 h, planted conversations; 15 sampling
seeds measured, all inside them, for each generator): follow-up share within
0.04 of the training trace, mean turns per conversation within 8%, share of
conversations with three or more turns within 0.04; inter-turn gaps pass a
two-sample KS test at the 1% level; at ``rate=scale:4`` the request count is
within 10% of 4x the training trace, ``upsample=conversations`` keeps the gap
median within 10% and passes the KS test, ``upsample=compress`` shrinks the
median by a factor in [3.6, 4.4], its gaps x 4 pass the KS test, and its raw
gaps fail it (p < 1e-6); constant and curve targets are met within 10%.

Measured over sampling seeds 0-14 (worst case; parametric / neural, the
neural model trained as ``FACTORIES`` says, ~15 s): follow-up share 0.029 /
0.016, mean turns 6.2% / 3.3%, three or more turns 0.035 / 0.017; smallest KS
p of gaps 0.30 / 0.17 (natural), 0.52 / 0.45 (scale:4 conversations), 0.58 /
0.32 (compress, x 4); request count at scale:4 in [3.91, 4.06] / [3.69, 4.21]
x the trace (conversations), [3.92, 4.10] / [3.95, 4.21] (compress); gap
median ratio kept in [0.975, 1.011] / [0.994, 1.019], compressed in
[3.99, 4.09] / [3.91, 4.03]; constant and curve targets 7.2% / 8.4% off. The
neural request counts spread more: its point process learns some burstiness
on this Poisson fixture, so its openers vary more between seeds than a
renewal process's. Refitted on fixture seeds 1-3 (5 sampling seeds each) the
neural conversation statistics stay inside every tolerance, but its natural
opener rate is up to 12% below the trace's on seed 1 (scale:4 gives 3.42-3.53
x the trace there): a limit of the tiny point process, not of the
conversation model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from servegen_ml.conversations.empirical import conversation_roles
from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.base import load_generator
from servegen_ml.generators.naive import NaiveGenerator
from servegen_ml.generators.neural import NeuralGenerator
from servegen_ml.generators.parametric import ParametricGenerator
from servegen_ml.stats.conversations import conversation_stats
from servegen_ml.trace.validate import validate_trace
from tests.factories import conversational_trace, multimodal_conversational_trace

DURATION_S = 14_400.0
KS_LEVEL = 0.01
NEURAL_SIZES = {"hidden": 16, "embedding": 4, "head_hidden": 16, "time_components": 3, "mark_components": 3}
NEURAL_TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "max_epochs": 10,
    "default_root_dir": None,
    "num_threads": 1,
}
FACTORIES = {
    "parametric": lambda: ParametricGenerator(rate_window_s=600.0, data_window_s=3600.0),
    "naive": lambda: NaiveGenerator(),
    "neural": lambda: NeuralGenerator(**NEURAL_SIZES, chunk_len=32, lanes=16, trainer=NEURAL_TRAINER),
}
_FITTED: dict = {}


def fitted(name: str):
    """(generator fitted on the fixture, the fixture, its conversation statistics), once per session."""
    if name not in _FITTED:
        trace = conversational_trace(seed=0, duration_s=DURATION_S)
        _FITTED[name] = (FACTORIES[name]().fit(trace), trace, conversation_stats(trace))
    return _FITTED[name]


def generate(name: str, rate: str = "natural", upsample: str = "conversations", seed: int = 0, **spec):
    gen, _, _ = fitted(name)
    values = {"duration_s": DURATION_S, "rate": rate, "upsample": upsample, **spec}
    return gen.sample(GenerationSpec.from_values(**values), np.random.default_rng(seed))


def gaps_of(trace: pd.DataFrame) -> np.ndarray:
    return conversation_stats(trace)["inter_turn_gap_s"]


@pytest.fixture(params=sorted(FACTORIES))
def name(request):
    return request.param


def test_scale_up_by_more_conversations_keeps_inter_turn_gaps(name):
    _, trace, source = fitted(name)
    out = generate(name, rate="scale:4", upsample="conversations")
    assert 3.6 < len(out) / len(trace) < 4.4
    gaps = gaps_of(out)
    assert 0.9 < np.median(gaps) / np.median(source["inter_turn_gap_s"]) < 1.1
    assert stats.ks_2samp(gaps, source["inter_turn_gap_s"]).pvalue > KS_LEVEL


def test_scale_up_by_compressing_time_shrinks_inter_turn_gaps(name):
    _, trace, source = fitted(name)
    out = generate(name, rate="scale:4", upsample="compress")
    assert 3.6 < len(out) / len(trace) < 4.4
    gaps = gaps_of(out)
    assert 3.6 < np.median(source["inter_turn_gap_s"]) / np.median(gaps) < 4.4
    assert stats.ks_2samp(4.0 * gaps, source["inter_turn_gap_s"]).pvalue > KS_LEVEL
    assert stats.ks_2samp(gaps, source["inter_turn_gap_s"]).pvalue < 1e-6


def test_generated_conversations_match_the_training_trace(name):
    _, _, source = fitted(name)
    synthetic = conversation_stats(generate(name))
    assert abs(synthetic["follow_up_share"] - source["follow_up_share"]) < 0.04
    assert abs(synthetic["turns"].mean() / source["turns"].mean() - 1.0) < 0.08
    assert abs(np.mean(synthetic["turns"] >= 3) - np.mean(source["turns"] >= 3)) < 0.04
    assert stats.ks_2samp(synthetic["inter_turn_gap_s"], source["inter_turn_gap_s"]).pvalue > KS_LEVEL


@pytest.mark.parametrize("upsample", ["conversations", "compress"])
def test_absolute_targets_are_reached_with_follow_ups_counted(name, upsample):
    for rate, mean_rate in ((0.5, 0.5), ("curve:0=0.2,14400=0.6", 0.4)):
        out = generate(name, rate=rate, upsample=upsample)
        assert abs(len(out) / DURATION_S / mean_rate - 1.0) < 0.1, (rate, len(out))


def test_contract_holds_with_conversations(name, tmp_path):
    gen, trace, _ = fitted(name)
    spec = GenerationSpec.from_values(duration_s=1800.0, start_s=600.0, rate="scale:2")
    a = gen.sample(spec, np.random.default_rng(7))
    pd.testing.assert_frame_equal(a, gen.sample(spec, np.random.default_rng(7)))
    assert not a.equals(gen.sample(spec, np.random.default_rng(8)))
    clean, _ = validate_trace(a, "sample")
    pd.testing.assert_frame_equal(clean, a)
    assert {"conversation_id", "turn"} <= set(a.columns) and a["timestamp"].max() < spec.duration_s
    gen.save(tmp_path / "ck")
    loaded = load_generator(tmp_path / "ck")
    pd.testing.assert_frame_equal(
        loaded.sample(spec, np.random.default_rng(3)), gen.sample(spec, np.random.default_rng(3))
    )
    for scored in (trace, a):
        lp = gen.log_prob(scored)
        assert len(lp) == len(scored) and "conversation" in lp.columns
        assert np.isfinite(lp.to_numpy()).all() and (lp.drop(columns="total").to_numpy() <= 1e-9).all()
        np.testing.assert_allclose(lp.drop(columns="total").sum(axis=1), lp["total"])
    pd.testing.assert_frame_equal(loaded.log_prob(trace), gen.log_prob(trace))


def test_likelihood_rewards_the_real_conversation_structure(name):
    gen, _, _ = fitted(name)
    held_out = conversational_trace(seed=5, duration_s=7200.0)
    # Permuting ids among a client's rows keeps each conversation's turn count but scrambles gaps and growth.
    shuffled = held_out.copy()
    rng = np.random.default_rng(0)
    for client in ("c0", "c1", "c2", "tiny"):
        rows = np.flatnonzero(held_out["client_id"].to_numpy() == client)
        shuffled.loc[rows, "conversation_id"] = held_out["conversation_id"].to_numpy()[rng.permutation(rows)]
    real, scrambled = gen.log_prob(held_out), gen.log_prob(shuffled)
    assert real["conversation"].mean() > scrambled["conversation"].mean() + 1.0
    assert real["total"].mean() > scrambled["total"].mean() + 1.0


def test_client_selection_keeps_conversations_within_clients():
    out = generate("parametric", clients="[c0]", duration_s=3600.0)
    assert set(out["client_id"]) == {"c0"} and out["turn"].max() > 1
    out = generate("parametric", clients="new:3", duration_s=3600.0)
    roles = conversation_roles(out)
    follow = np.flatnonzero(~roles.is_opener)
    client = out["client_id"].to_numpy()
    assert set(client) <= {"new-0", "new-1", "new-2"} and len(follow) > 0
    assert (client[follow] == client[roles.predecessor[follow]]).all()


def test_multimodal_and_reasoning_fields_on_follow_ups():
    trace = multimodal_conversational_trace(seed=2, items_seed=0)
    gen = ParametricGenerator(rate_window_s=600.0, data_window_s=3600.0).fit(trace)
    out = gen.sample(GenerationSpec(duration_s=3600.0), np.random.default_rng(1))
    validate_trace(out)
    assert {"image_tokens", "text_tokens", "reasoning_tokens", "turn"} <= set(out.columns)
    roles = conversation_roles(out)
    f = np.flatnonzero(~roles.is_opener)
    p = roles.predecessor[f]
    inp, outp = out["input_tokens"].to_numpy(), out["output_tokens"].to_numpy()
    assert len(f) > 100 and (inp[f] >= inp[p] + outp[p]).all()
    assert np.isfinite(gen.log_prob(trace)["total"]).all()


def test_mooncake_upsampling_modes(shared_traces):
    from servegen_ml.trace.io import read_trace

    trace = read_trace(shared_traces / "mooncake-fast25" / "conversation_trace.jsonl")
    source = conversation_stats(trace)
    gen = ParametricGenerator().fit(trace)
    duration_s = float(np.ceil(trace["timestamp"].max()))

    def sample(rate, upsample):
        spec = GenerationSpec.from_values(duration_s=duration_s, rate=rate, upsample=upsample)
        return conversation_stats(gen.sample(spec, np.random.default_rng(0)))

    natural = sample("natural", "conversations")
    assert abs(natural["follow_up_share"] - source["follow_up_share"]) < 0.03
    assert abs(natural["turns"].mean() / source["turns"].mean() - 1.0) < 0.05
    kept = sample("scale:4", "conversations")
    assert stats.ks_2samp(kept["inter_turn_gap_s"], source["inter_turn_gap_s"]).pvalue > KS_LEVEL
    compressed = sample("scale:4", "compress")
    # In 1 h of output the compressed run covers 4 h of natural time, so fewer long gaps are cut at the end.
    assert 3.4 < np.median(source["inter_turn_gap_s"]) / np.median(compressed["inter_turn_gap_s"]) < 4.6
    assert stats.ks_2samp(compressed["inter_turn_gap_s"], source["inter_turn_gap_s"]).pvalue < 1e-6
