"""Segments, lanes and batches: every event scored once, hidden state reset at segment starts only."""

import numpy as np

from servegen_ml.neural.data.chunks import (
    cold_starts,
    cut_long,
    gather_batch,
    plan_lanes,
    whole_segments,
)
from servegen_ml.neural.data.events import store_from_frame
from servegen_ml.neural.data.validation import ValidationBlocks
from tests.factories import synthetic_trace


def _store():
    return store_from_frame(synthetic_trace(seed=1, duration_s=900.0, n_clients=3, multimodal=True))


def test_validation_blocks_interleave_with_training():
    store = _store()
    blocks = ValidationBlocks.for_window(
        store.window_start_s, store.window_end_s, 0.25, block_s=60.0, min_blocks=2
    )
    assert blocks.period == 4 and blocks.block_s == 60.0
    train, val = blocks.split(store)
    t = np.asarray(store.columns["time_s"])
    in_val = blocks.is_validation(t)
    assert all((~in_val[lo:hi]).all() for lo, hi in zip(train.lo, train.hi))
    assert all(in_val[lo:hi].all() for lo, hi in zip(val.lo, val.hi))
    assert (train.hi - train.lo).sum() + (val.hi - val.lo).sum() == store.n_events
    assert 0.15 < in_val.mean() < 0.35
    # Validation blocks all over the window (not only at its end): every 4th minute validates.
    val_blocks = np.unique(np.floor((t[in_val] - store.window_start_s) / 60.0).astype(int))
    np.testing.assert_array_equal(val_blocks % 4, 3)
    assert len(val_blocks) >= 3
    # Validation continues from the client's previous (training) event; training starts cold
    # at its stretch start and never takes a validation event as input.
    first = np.isin(val.lo, store.offsets[:-1])
    np.testing.assert_array_equal(val.prev[~first], val.lo[~first] - 1)
    assert (train.prev == -1).all()
    assert (t[train.lo] >= train.window_start_s).all() and (t[train.hi - 1] <= train.survival_end_s).all()
    assert not blocks.is_validation(train.survival_end_s - 1e-6).any()
    inner = train.survival_end_s[train.survival_end_s < store.window_end_s]
    assert blocks.is_validation(inner + 1e-3).all()  # training ends where a validation block starts


def test_validation_blocks_seconds_and_short_windows():
    blocks = ValidationBlocks.for_window(0.0, 7200.0, 0.1)
    assert blocks.period == 10 and blocks.block_s == 180.0  # 4 validation blocks fit in 2 h
    assert blocks.validation_seconds(np.array([0.0]), np.array([7200.0]))[0] == 720.0
    # Cycles of 1800 s; [1620, 1800) validates.
    assert blocks.validation_seconds(np.array([1600.0]), np.array([1620.0]))[0] == 0.0
    assert blocks.validation_seconds(np.array([1700.0]), np.array([1900.0]))[0] == 100.0
    day = ValidationBlocks.for_window(0.0, 2 * 86400.0, 0.1)
    assert day.block_s == 3600.0  # hour blocks: hours 9, 19, 29, 39 validate
    assert day.is_validation(np.array([9.5, 19.5, 29.5, 8.5]) * 3600.0).tolist() == [True] * 3 + [False]
    none = ValidationBlocks.for_window(0.0, 100.0, 0.0)
    assert not none.is_validation(np.linspace(0, 99, 50)).any()


def test_plan_covers_every_event_once_and_resets_at_segment_starts():
    store = _store()
    segments = cut_long(whole_segments(store), 100)
    assert len(segments) > 3
    plan = plan_lanes(segments, n_lanes=4, chunk_len=16, rng=np.random.default_rng(0))
    seen = np.zeros(store.n_events, dtype=int)
    for step in range(plan.n_steps):
        batch = gather_batch(store, plan, step, 16)
        idx = (plan.lo[:, step, None] + np.arange(16))[batch["mask"]]
        seen[idx] += 1
        # a chunk continuing a segment does not reset; its first input is the previous event
        cont = ~batch["reset"] & (plan.length[:, step] > 0)
        np.testing.assert_array_equal(plan.prev[cont, step], plan.lo[cont, step] - 1)
    assert (seen == 1).all()
    # survival terms: exactly one per original (uncut) segment
    n_surv = 0
    for step in range(plan.n_steps):
        n_surv += int(np.isfinite(gather_batch(store, plan, step, 16)["survival_s"]).sum())
    assert n_surv == len(whole_segments(store))


def test_batch_gaps_and_inputs():
    store = _store()
    seg = whole_segments(store)
    plan = plan_lanes(seg, n_lanes=len(seg), chunk_len=8, rng=None)
    b = gather_batch(store, plan, 0, 8)
    t = store.columns["time_s"]
    lo = plan.lo[:, 0]
    # first event of each client: gap from the window start, input is a start token
    np.testing.assert_allclose(b["gap_s"][:, 0], t[lo] - store.window_start_s)
    assert b["x_start"][:, 0].all() and not b["x_start"][:, 1:].any()
    np.testing.assert_allclose(b["gap_s"][:, 1], t[lo + 1] - t[lo])
    np.testing.assert_array_equal(b["x_output"][:, 1], store.columns["output"][lo])
    # items of target events belong to their owners
    owner = b["items_image_owner"]
    counts = np.bincount(owner, minlength=b["mask"].size).reshape(b["mask"].shape)
    np.testing.assert_array_equal(counts, b["y_image_count"])


def test_cold_starts_begin_at_random_times_with_forward_gaps():
    store = _store()
    train, _ = ValidationBlocks.for_window(store.window_start_s, 600.0, 0.0).split(store)
    cold = cold_starts(store, train, per_client=20, per_hour=0.0, max_events=5, rng=np.random.default_rng(0))
    t = store.columns["time_s"]
    assert len(cold) > 40 and (cold.prev == -1).all() and ((cold.hi - cold.lo) <= 5).all()
    for lo, t0, c in zip(cold.lo, cold.window_start_s, cold.client):
        assert t[lo] >= t0  # the first target is the client's first event at or after the start
        first_of_client = store.offsets[c]
        assert lo == first_of_client or t[lo - 1] < t0
    plan = plan_lanes(cold, n_lanes=len(cold), chunk_len=8, rng=None)
    b = gather_batch(store, plan, 0, 8)
    np.testing.assert_allclose(b["gap_s"][:, 0], t[plan.lo[:, 0]] - plan.window_start_s[:, 0])
    assert b["x_start"][:, 0].all()
