"""The numpy sampling step reproduces the torch model; scoring carries state exactly across chunks."""

import copy

import numpy as np
import pytest
import torch
from scipy import stats

from servegen_ml.core.spec import TIME_RESOLUTION_S
from servegen_ml.neural import features as F
from servegen_ml.neural.data.chunks import gather_batch, plan_lanes, whole_segments
from servegen_ml.neural.data.datamodule import to_tensors
from servegen_ml.neural.data.events import store_from_frame
from servegen_ml.neural.data.normalizers import fit_normalizers, rate_curves
from servegen_ml.neural.model.tpp import MarkedTPP
from servegen_ml.neural.rate_level import fit_rate_level, resolved_gap, unit_clock
from servegen_ml.neural.sampling.numpy_tpp import NumpyTPP, RowBias
from servegen_ml.neural.sampling.segment_sampler import ClientTable
from servegen_ml.neural.training import scoring
from servegen_ml.trace.schema import make_trace
from tests.factories import synthetic_trace


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Two OpenMP threads crawl on a CPU shared with other processes; restore the setting afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    store = store_from_frame(
        synthetic_trace(seed=5, duration_s=900.0, n_clients=3, multimodal=True, reasoning=True)
    )
    curves = rate_curves(store, 300.0, 900.0)
    level = fit_rate_level(curves, 300.0, 900.0)
    norm = fit_normalizers(store, unit_clock(level, 300.0, 900.0))
    kwargs = tpp_kwargs(store, norm)
    tpp = MarkedTPP(**kwargs, hidden=12, embedding=4, head_hidden=10)
    tpp.set_normalizers(norm)
    tpp.set_activity(curves, 900.0)
    tpp.set_rate_level(level)
    with torch.no_grad():  # non-trivial heads
        for p in tpp.heads.out.parameters():
            p.add_(0.3 * torch.randn_like(p))
    weights = {k: v.numpy().copy() for k, v in tpp.state_dict().items()}
    return store, tpp.eval(), NumpyTPP(kwargs, weights, norm.max_count)


def tpp_kwargs(store, norm):
    return {
        "n_clients": len(store.client_ids), "layout": store.layout.to_dict(), "spikes": norm.spikes,
        "time_components": 3, "mark_components": 2, "activity_bins": 3, "activity_bin_s": 300.0,
    }  # fmt: skip


def test_features_gru_and_heads_match_torch(setup):
    store, tpp, ntpp = setup
    seg = whole_segments(store)
    plan = plan_lanes(seg, len(seg), 16, rng=None)
    b = to_tensors(gather_batch(store, plan, 0, 16))
    emb, gm, gs = tpp.client_inputs(b["client"])
    x_marks = {k: b[f"x_{k}"] for k in ("input", "output", "reasoning", "image_count", "image_item_log")}
    client = b["client"][:, None]
    x_t = tpp.event_features(
        b["x_time_s"], b["x_gap_s"], b["x_start"], gm[:, None], gs[:, None], x_marks, client, tpp.activity
    )
    x_n = ntpp.event_features(
        b["x_time_s"].numpy(), b["x_gap_s"].numpy(), b["x_start"].numpy(), gm[:, None].detach().numpy(),
        gs[:, None].numpy(), {k: v.numpy() for k, v in x_marks.items()}, ntpp.activity, client.numpy(),
    )  # fmt: skip
    assert x_t[..., 8:13].std() > 0.1  # the activity features vary
    np.testing.assert_allclose(x_n, x_t.numpy(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        h0 = tpp.encoder.initial_state(emb)
        states, _ = tpp.encoder(x_t, emb, h0)
        h, gates = ntpp.client_rows(emb.numpy())
        np.testing.assert_allclose(h, h0.numpy(), atol=1e-6)
        for step in range(5):
            h = ntpp.gru_step(h, x_n[:, step], gates)
            np.testing.assert_allclose(h, states[:, step].numpy(), atol=1e-5)
        cond = torch.randn(states.shape[0], len(F.condition_names(store.layout)))
        proj_t, proj_n = tpp.heads.project(states[:, 4]), ntpp.project(h)
        # Random per-row head offsets: both sides add the same slice of them (numpy: with the biases).
        off = torch.randn(states.shape[0], tpp.heads.client_offsets.weight.shape[1])
        bias = RowBias(ntpp.client_bias(off.numpy()), np.arange(states.shape[0]))
        for name in ntpp.head_names:
            np.testing.assert_allclose(
                ntpp.raw(name, proj_n, cond.numpy(), bias),
                tpp.heads.raw(name, proj_t, cond, off).numpy(),
                atol=1e-5,
            )


def test_sampled_gaps_follow_the_torch_distribution(setup):
    _, tpp, ntpp = setup
    n = 20_000
    h = np.tile(np.random.default_rng(0).uniform(-0.5, 0.5, (1, ntpp.hidden)).astype(np.float32), (n, 1))
    gaps = ntpp.sample_gap(ntpp.project(h), None, np.random.default_rng(1))
    with torch.no_grad():
        raw = tpp.heads.raw("time", tpp.heads.project(torch.from_numpy(h[:1])), None, None)
        dist = tpp.gap_dist(raw)
        p0 = float(torch.sigmoid(dist.zero_logit))
        w = torch.softmax(dist.comp_logits, -1).numpy()[0]
        mu, sd = dist.loc.numpy()[0], np.exp(dist.log_scale.numpy()[0])
    assert np.mean(gaps == 0) == pytest.approx(p0, abs=0.015)
    pos = np.log(gaps[gaps > 0])

    def cdf(x):
        return sum(w[k] * stats.norm.cdf((x - mu[k]) / sd[k]) for k in range(len(w)))

    assert stats.kstest(pos, cdf).pvalue > 0.001
    # The mean is pinned to 1 (unit time): torch's parameters say so exactly, the draws within noise.
    assert (1 - p0) * float((w * np.exp(mu + sd**2 / 2)).sum()) == pytest.approx(1.0, rel=1e-9)
    second_moment = (1 - p0) * float((w * np.exp(2 * mu + 2 * sd**2)).sum())
    standard_error = np.sqrt((second_moment - 1.0) / n)
    assert abs(gaps.mean() - 1.0) < 5 * standard_error


def test_sampler_conditions_on_marks_like_training(setup, monkeypatch):
    store, _tpp, ntpp = setup
    seen = {}
    raw = NumpyTPP.raw

    def spy(self, name, projected, condition, offsets):
        if name == "reasoning":
            seen["cond"] = condition.copy()
        return raw(self, name, projected, condition, offsets)

    monkeypatch.setattr(NumpyTPP, "raw", spy)
    n = 500
    h = np.random.default_rng(2).uniform(-1, 1, (n, ntpp.hidden)).astype(np.float32)
    gm, gs = np.zeros(n), np.ones(n)
    gap = ntpp.sample_gap(ntpp.project(h), None, np.random.default_rng(3))
    marks, items = ntpp.sample_marks(ntpp.project(h), None, gap, gm, gs, np.random.default_rng(4))
    assert len(items["image"]) == marks["image_count"].sum()
    want = F.condition_features(
        np, store.layout, gap, gm, gs, marks, ntpp.mark_mean, ntpp.mark_std, ntpp.fields
    )
    np.testing.assert_allclose(seen["cond"], np.stack(want, -1), atol=1e-5)
    assert (marks["reasoning"] <= marks["output"]).all() and (marks["reasoning"] >= 0).all()


def test_scoring_does_not_depend_on_chunk_length(setup, monkeypatch):
    store, tpp, _ = setup
    clients = ClientTable(
        tpp.embedding.weight.detach().numpy(), tpp.gap_log_mean.numpy(), tpp.gap_log_std.numpy(),
        tpp.activity.numpy(), tpp.rate_level.numpy(), tpp.heads.client_offsets.weight.detach().numpy(),
    )  # fmt: skip
    monkeypatch.setattr(scoring, "BATCH_EVENTS", 16 * len(store.client_ids))
    short = scoring.score_store(tpp, store, clients)
    monkeypatch.setattr(scoring, "BATCH_EVENTS", 1 << 18)
    long = scoring.score_store(tpp, store, clients)
    for k in long:
        np.testing.assert_allclose(short[k], long[k], rtol=1e-6, atol=1e-6)
    assert all(np.isfinite(v).all() and (v <= 1e-9).all() for v in long.values())


def test_numpy_and_torch_draw_the_same_unit_gaps(setup):
    """Same history state and generator: the numpy step and the torch distribution give the same gaps."""
    _, tpp, ntpp = setup
    h = np.random.default_rng(5).uniform(-1, 1, (500, ntpp.hidden)).astype(np.float32)
    a = ntpp.sample_gap(ntpp.project(h), None, np.random.default_rng(7))
    with torch.no_grad():
        raw = tpp.heads.raw("time", tpp.heads.project(torch.from_numpy(h)), None, None)
        b = tpp.gap_dist(raw).sample(np.random.default_rng(7))
    assert 0.01 < (a == 0).mean() < 0.99
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=0)


def test_numpy_and_torch_read_the_reasoning_head_with_its_spikes(setup, monkeypatch):
    """The reasoning ratio's spikes (frequent ratios of the synthetic trace) split the head alike on both sides."""
    from servegen_ml.neural.sampling import numpy_tpp

    _, tpp, ntpp = setup
    assert len(tpp.spikes("reasoning")) > 0
    np.testing.assert_array_equal(ntpp.spikes["reasoning"], tpp.spikes("reasoning").numpy())
    seen = {}
    real_cond, real_sample = NumpyTPP.raw, numpy_tpp.S.sample_ratio_tokens

    def spy_raw(self, name, projected, condition, offsets):
        if name == "reasoning":
            seen["cond"] = condition.copy()
        return real_cond(self, name, projected, condition, offsets)

    def spy_sample(logits, comp, loc, log_scale, total, rng, spike_keys):
        seen["numpy"] = (logits, comp, loc, log_scale, spike_keys)
        return real_sample(logits, comp, loc, log_scale, total, rng, spike_keys)

    monkeypatch.setattr(NumpyTPP, "raw", spy_raw)
    monkeypatch.setattr(numpy_tpp.S, "sample_ratio_tokens", spy_sample)
    h = np.random.default_rng(8).uniform(-1, 1, (300, ntpp.hidden)).astype(np.float32)
    gap = ntpp.sample_gap(ntpp.project(h), None, np.random.default_rng(9))
    ntpp.sample_marks(ntpp.project(h), None, gap, np.zeros(300), np.ones(300), np.random.default_rng(10))
    with torch.no_grad():
        proj = tpp.heads.project(torch.from_numpy(h))
        dist = tpp.ratio_dist(tpp.heads.raw("reasoning", proj, torch.from_numpy(seen["cond"]), None))
    logits, comp, loc, log_scale, keys = seen["numpy"]
    np.testing.assert_array_equal(keys, dist.spike_keys.numpy())
    for a, b in (
        (logits, dist.logits),
        (comp, dist.comp_logits),
        (loc, dist.loc),
        (log_scale, dist.log_scale),
    ):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-5)


def test_gaps_below_the_clock_resolution_read_alike():
    """Training reads a sub-millisecond gap as one millisecond long, whatever its recorded size
    (the sampler draws such gaps at no particular size); the likelihood still scores the gap."""
    res = TIME_RESOLUTION_S
    unit_gap = np.array([0.0, 2e-7, 4e-4, 5e-3, 3.0])
    gap_s = unit_gap / 2.0  # a rate level of 2 units per second
    want = np.array([0.0, 2 * res, 2 * res, 5e-3, 3.0])
    np.testing.assert_allclose(resolved_gap(np, unit_gap, gap_s, res), want)
    got = resolved_gap(torch, torch.from_numpy(unit_gap), torch.from_numpy(gap_s), res)
    np.testing.assert_allclose(got.numpy(), want)
    np.testing.assert_array_equal(resolved_gap(np, unit_gap, gap_s, 0.0), unit_gap)

    def encoder_inputs(tiny):
        t = np.array([0.0, 1.0, 1.0 + tiny, 2.5, 4.0, 7.0])
        trace = make_trace(
            {"timestamp": t, "client_id": ["a"] * 6, "input_tokens": [5] * 6, "output_tokens": [9] * 6}
        )
        store = store_from_frame(trace)
        norm = fit_normalizers(store, lambda c, u: u, gap_resolution_s=res)
        torch.manual_seed(0)
        tpp = MarkedTPP(**tpp_kwargs(store, norm), hidden=6, embedding=3, head_hidden=5, gap_resolution_s=res)
        tpp.set_normalizers(norm)
        tpp.set_activity(np.ones((1, 3)), 900.0)
        tpp.set_rate_level(np.ones((1, 3)))  # unit time is seconds
        seen = {}
        real = tpp.encoder.forward

        def spy(x, emb, h0):
            seen.setdefault("x", x.detach().clone())  # the first call: the whole chunk
            return real(x, emb, h0)

        tpp.encoder.forward = spy
        b = to_tensors(gather_batch(store, plan_lanes(whole_segments(store), 1, 8, rng=None), 0, 8))
        emb, gm, gs = tpp.client_inputs(b["client"])
        with torch.no_grad():
            parts, _ = tpp(b, emb, gm, gs, tpp.encoder.initial_state(emb))
        return seen["x"][0, 3], parts["time"][0, 2]

    x_a, lp_a = encoder_inputs(1e-7)
    x_b, lp_b = encoder_inputs(6e-4)
    torch.testing.assert_close(x_a, x_b)  # the event after the short gap sees the same history
    assert float(lp_a) != float(lp_b)  # while the gap's own likelihood is of its recorded value


def test_client_offsets_learn_at_their_own_rate(setup):
    # One Adam group for the shared weights at lr, one for the per-client head offsets at
    # lr x offset_lr_scale; every parameter in exactly one.
    from servegen_ml.neural.training.lightning_module import TPPLightningModule

    tpp = copy.deepcopy(setup[1])  # configure_model switches it to training precision
    module = TPPLightningModule(lambda: tpp, lr=2e-3, offset_lr_scale=10.0)
    module.configure_model()
    optimizer = module.configure_optimizers()["optimizer"]
    shared, offsets = optimizer.param_groups
    assert shared["lr"] == pytest.approx(2e-3) and offsets["lr"] == pytest.approx(2e-2)
    assert offsets["params"] == [tpp.heads.client_offsets.weight]
    assert len(shared["params"]) + 1 == len(list(tpp.parameters()))


def test_time_head_offsets_step_at_the_base_rate(setup):
    # Adam's first step moves every entry by its group's rate: the marks' offsets by lr x scale,
    # the time head's columns by lr (their step is shrunk back after each optimizer step).
    from servegen_ml.neural.training.lightning_module import TPPLightningModule

    tpp = copy.deepcopy(setup[1])
    module = TPPLightningModule(lambda: tpp, lr=1e-3, offset_lr_scale=10.0)
    module.configure_model()
    optimizer = module.configure_optimizers()["optimizer"]
    weight = tpp.heads.client_offsets.weight
    before = weight.detach().clone()
    for p in tpp.parameters():
        p.grad = torch.ones_like(p)
    module.optimizer_step(0, 0, optimizer)
    moved = (before - weight.detach()).abs()
    lo, hi = tpp.heads.slices["time"]
    np.testing.assert_allclose(moved[:, lo:hi].numpy(), 1e-3, rtol=1e-3)
    np.testing.assert_allclose(moved[:, hi:].numpy(), 1e-2, rtol=1e-3)


def test_a_non_finite_training_loss_stops_training_naming_the_term(setup):
    # A NaN weight (what a diverged step leaves) must not train on into a checkpoint of NaNs.
    from servegen_ml.core.errors import TrainingDivergedError
    from servegen_ml.neural.training.lightning_module import TPPLightningModule

    store, tpp = setup[0], copy.deepcopy(setup[1])
    module = TPPLightningModule(lambda: tpp)
    module.configure_model()
    batch = to_tensors(gather_batch(store, plan_lanes(whole_segments(store), 1, 8, rng=None), 0, 8))
    assert torch.isfinite(module.training_step(batch, 0))
    with torch.no_grad():
        tpp.heads.out["input"].bias[0] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"training NLL became nan at step 0 \(in: input\)"):
        module.training_step(batch, 1)
