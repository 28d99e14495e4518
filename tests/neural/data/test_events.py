"""Trace -> client-major event store: ordering, items, the text part, streaming from chunks."""

import numpy as np
import pytest

from servegen_ml.neural.data.events import build_store, store_from_frame, timeline_origin
from servegen_ml.trace.schema import list_lengths, list_values
from tests.factories import synthetic_trace


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace(seed=3, duration_s=1200.0, n_clients=4, multimodal=True, reasoning=True)


def test_store_is_client_major_and_time_sorted(trace):
    store = store_from_frame(trace)
    assert store.client_ids == sorted(trace["client_id"].unique())
    assert store.n_events == len(trace)
    for c, cid in enumerate(store.client_ids):
        rows = trace[trace["client_id"] == cid]
        t = store.columns["time_s"][store.offsets[c] : store.offsets[c + 1]]
        np.testing.assert_array_equal(t, rows["timestamp"].to_numpy())
        np.testing.assert_array_equal(
            store.columns["output"][store.offsets[c] : store.offsets[c + 1]], rows["output_tokens"]
        )
        np.testing.assert_array_equal(
            store.columns["reasoning"][store.offsets[c] : store.offsets[c + 1]], rows["reasoning_tokens"]
        )


def test_items_round_trip_and_text_part(trace):
    store = store_from_frame(trace)
    assert store.layout.modalities == ("image",) and store.layout.items_in_input
    offsets, tokens = store.items["image"]
    for c, cid in enumerate(store.client_ids):
        rows = trace[trace["client_id"] == cid].reset_index(drop=True)
        lo, hi = store.offsets[c], store.offsets[c + 1]
        np.testing.assert_array_equal(tokens[offsets[lo] : offsets[hi]], list_values(rows["image_tokens"]))
        np.testing.assert_array_equal(np.diff(offsets[lo : hi + 1]), list_lengths(rows["image_tokens"]))
        np.testing.assert_array_equal(store.columns["image_count"][lo:hi], list_lengths(rows["image_tokens"]))
        # The base (text) part is input minus the items, here exactly text_tokens.
        np.testing.assert_array_equal(store.columns["input"][lo:hi], rows["text_tokens"])


def test_streaming_build_equals_in_memory(trace, tmp_path):
    whole = store_from_frame(trace)
    chunks = [trace.iloc[i : i + 700].reset_index(drop=True) for i in range(0, len(trace), 700)]
    streamed = build_store(lambda: iter(chunks), directory=tmp_path / "store")
    assert streamed.client_ids == whole.client_ids
    for name, col in whole.columns.items():
        np.testing.assert_array_equal(np.asarray(streamed.columns[name]), col)
    for m in whole.items:
        for a, b in zip(streamed.items[m], whole.items[m]):
            np.testing.assert_array_equal(np.asarray(a), b)
    assert isinstance(streamed.columns["time_s"], np.memmap)


def test_unsorted_chunks_are_refused(trace):
    a, b = trace.iloc[:500], trace.iloc[500:1000]
    with pytest.raises(ValueError, match="not sorted"):
        build_store(lambda: iter([b, a]))


def test_known_client_index_and_window(trace):
    store = store_from_frame(trace, client_ids=["zz", "c1"], window=(None, 5000.0))
    assert store.client_ids[:2] == ["zz", "c1"] and store.counts[0] == 0
    assert store.window_end_s == 5000.0 and store.window_start_s == trace["timestamp"].min()


def test_epoch_timestamps_start_at_midnight():
    assert timeline_origin(12.0) == 0.0
    assert timeline_origin(1_700_000_123.0) == 1_699_920_000.0
