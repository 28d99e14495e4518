"""Segments, lanes and batches: every event scored once, hidden state reset at segment starts only."""

import numpy as np

from servegen_ml.neural.data.chunks import (
    cold_starts,
    cut_long,
    gather_batch,
    plan_lanes,
    split_segments,
    whole_segments,
)
from servegen_ml.neural.data.events import store_from_frame
from tests.factories import synthetic_trace


def _store():
    return store_from_frame(synthetic_trace(seed=1, duration_s=900.0, n_clients=3, multimodal=True))


def test_split_is_time_based():
    store = _store()
    split = 600.0
    train, val = split_segments(store, split)
    t = store.columns["time_s"]
    for seg in (train,):
        assert all((t[lo:hi] < split).all() for lo, hi in zip(seg.lo, seg.hi))
    assert all((t[lo:hi] >= split).all() for lo, hi in zip(val.lo, val.hi))
    assert (train.hi - train.lo).sum() + (val.hi - val.lo).sum() == store.n_events
    np.testing.assert_array_equal(val.prev, val.lo - 1)  # validation continues from the last training event


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
    train, _ = split_segments(store, 600.0)
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
