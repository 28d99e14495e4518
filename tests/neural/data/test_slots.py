"""A slotted trace's events are spread within their slots: in order, uniformly, the same for every
block size and DDP shard."""

import numpy as np
import pytest
from scipy import stats

from servegen_ml.neural.data import slots
from servegen_ml.neural.data.events import StoreSource
from servegen_ml.trace.schema import make_trace

Q = 3.0


@pytest.fixture(scope="module")
def slotted():
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 1800, 6000))
    client = rng.choice(["a", "b", "c"], size=len(t), p=[0.6, 0.3, 0.1])
    return make_trace(
        {
            "timestamp": 100.0 + np.floor(t / Q) * Q,
            "client_id": client,
            "input_tokens": np.arange(len(t)) + 1,  # marks the recorded order
            "output_tokens": np.ones(len(t), dtype=np.int64),
        }
    )


def _spread(trace, rank=0, world=1, rows=1000):
    source = StoreSource(lambda: (trace.iloc[i : i + rows] for i in range(0, len(trace), rows)))
    assert source.time_quantum_s == Q
    store = source.build(rank, world)
    recorded = np.array(store.columns["time_s"], copy=True)
    slots.spread_within_slots(store, source.time_quantum_s)
    return store, recorded


def test_events_are_spread_over_their_own_slot_in_recorded_order(slotted):
    store, recorded = _spread(slotted)
    t = np.asarray(store.columns["time_s"])
    assert ((t >= recorded) & (t < recorded + Q)).all()
    for c in range(len(store.client_ids)):
        lo, hi = store.offsets[c], store.offsets[c + 1]
        assert (np.diff(t[lo:hi]) > 0).all()
        assert (np.diff(np.asarray(store.columns["input"][lo:hi])) > 0).all()  # order unchanged
    within = (t - recorded) / Q
    assert stats.kstest(within, "uniform").pvalue > 1e-3
    assert store.window_end_s == pytest.approx(recorded.max() + Q)


def test_spread_is_the_same_for_every_block_size_and_shard(slotted, monkeypatch):
    whole, _ = _spread(slotted)
    want = np.asarray(whole.columns["time_s"]).copy()
    monkeypatch.setattr(slots, "BLOCK_EVENTS", 7)
    small_blocks, _ = _spread(slotted)
    np.testing.assert_array_equal(np.asarray(small_blocks.columns["time_s"]), want)
    for rank in range(2):
        shard, _ = _spread(slotted, rank, 2)
        for c in np.flatnonzero(shard.counts):
            a = slice(shard.offsets[c], shard.offsets[c + 1])
            b = slice(whole.offsets[c], whole.offsets[c + 1])
            np.testing.assert_array_equal(np.asarray(shard.columns["time_s"])[a], want[b])
