"""Trace -> client-major event store: ordering, items, the text part, streaming from chunks."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from servegen_ml.neural.data.events import DiskColumn, build_store, store_from_frame, timeline_origin
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
    # The files are plain .npy columns, and nothing of them stays mapped in this process.
    assert isinstance(streamed.columns["time_s"], DiskColumn)
    np.testing.assert_array_equal(np.load(tmp_path / "store" / "time_s.npy"), whole.columns["time_s"])
    assert str(tmp_path / "store") not in Path("/proc/self/maps").read_text()
    # Pickled (to DDP workers) as file names: the copy reads the same values.
    copy = pickle.loads(pickle.dumps(streamed))
    np.testing.assert_array_equal(np.asarray(copy.columns["output"]), whole.columns["output"])


def test_disk_column_indexes_like_numpy(tmp_path):
    values = np.arange(1000, dtype=np.int32) * 7 - 300
    column = DiskColumn.create(tmp_path / "c.npy", np.int32, len(values))
    column[np.arange(0, 1000, 3)] = values[::3]  # scatter, then the rest
    column[1::3], column[2::3] = values[1::3], values[2::3]
    keys = [
        slice(None),
        slice(10, 20),
        slice(990, 2000),
        slice(50, 40),
        slice(None, None, -7),
        slice(-5, None),
    ]
    for key in keys + [np.array([999, 0, 5, 5]), np.zeros(0, np.int64), values > 100]:
        np.testing.assert_array_equal(column[key], values[key])
    assert column[-1] == values[-1] and column[np.int64(3)] == values[3]
    with pytest.raises(IndexError):
        column[1000]
    with pytest.raises(IndexError):
        column[np.array([1000])]
    assert str(tmp_path) not in Path("/proc/self/maps").read_text()
    empty = DiskColumn.create(tmp_path / "e.npy", np.float64, 0)
    assert len(empty[:]) == 0 and len(empty[np.zeros(0, np.int64)]) == 0


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
