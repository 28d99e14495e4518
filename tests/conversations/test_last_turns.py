"""The last-turn pass: which rows end their conversation id, and the fit that closes conversations there."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from servegen_ml.conversations import fit as conversation_fit
from servegen_ml.conversations import last_turns as lt
from servegen_ml.conversations.fit import ConversationFitter
from servegen_ml.trace.io import write_trace
from tests.factories import conversational_trace


def _chunks(trace: pd.DataFrame, rows: int):
    return [trace.iloc[i : i + rows] for i in range(0, len(trace), rows)]


def _trace() -> pd.DataFrame:
    trace = conversational_trace(seed=4)
    trace.loc[trace.index[::31], "conversation_id"] = None  # rows without an id: never a marked turn
    return trace


def _expected_last(trace: pd.DataFrame) -> np.ndarray:
    ids = trace["conversation_id"].reset_index(drop=True)
    has = ids.notna().to_numpy()
    last = np.zeros(len(trace), dtype=bool)
    last[ids[has].groupby(ids[has]).tail(1).index] = True
    return last


@pytest.mark.parametrize("rows", [7, 1_000, 100_000])
def test_each_ids_last_row_is_marked_whatever_the_chunks(rows):
    trace = _trace()
    marks = lt.mark_last_turns(_chunks(trace, rows))
    assert marks.rows == len(trace)
    np.testing.assert_array_equal(marks.of(0, len(trace)), _expected_last(trace))
    # Slices that start and end inside a byte.
    np.testing.assert_array_equal(marks.of(13, 50), _expected_last(trace)[13:63])
    with pytest.raises(RuntimeError, match="more rows"):
        marks.of(len(trace) - 3, 4)


def _fit(trace: pd.DataFrame, rows: int, idle_s: float, marked: bool):
    marks = lt.mark_last_turns(_chunks(trace, rows)) if marked else None
    fitter = ConversationFitter(idle_s=idle_s, last_turns=marks)
    openers, open_after = [], []
    for chunk in _chunks(trace, rows):
        openers.append(fitter.add(chunk))
        open_after.append(len(fitter._open.keys))
    return np.concatenate(openers), open_after, fitter.finish()


@pytest.mark.parametrize("rows", [97, 1_000, 100_000])
@pytest.mark.parametrize("idle_s", [conversation_fit.IDLE_S, 60.0])
def test_closing_at_the_last_turn_keeps_the_model_and_opens_only_continued_conversations(
    rows, idle_s, monkeypatch
):
    monkeypatch.setattr(conversation_fit, "RECORDS_IN_MEMORY", 500)
    trace = _trace()
    opener, _, before = _fit(trace, rows, idle_s, marked=False)
    marked_opener, open_after, after = _fit(trace, rows, idle_s, marked=True)
    # The idle rule still splits a conversation (idle_s=60 s splits many): the same openers, and the same
    # model bit for bit (last turns are recorded in the same order, so the float sums agree).
    np.testing.assert_array_equal(marked_opener, opener)
    for name in ("values_", "hazard_counts_", "summary_"):
        pd.testing.assert_frame_equal(getattr(after, name), getattr(before, name), check_exact=True)
    np.testing.assert_array_equal(after.output_edges_, before.output_edges_)
    assert after.burn_in_s_ == before.burn_in_s_
    # Open after a chunk: only ids with a row in it or before and a row after it.
    ids = trace["conversation_id"].to_numpy(dtype=object)
    for i, n_open in enumerate(open_after):
        end = min((i + 1) * rows, len(trace))
        continued = set(ids[:end][pd.notna(ids[:end])]) & set(ids[end:][pd.notna(ids[end:])])
        assert n_open <= len(continued)


def test_marks_of_other_rows_are_refused():
    trace = _trace()
    marks = lt.mark_last_turns([trace.iloc[::-1]])
    fitter = ConversationFitter(last_turns=marks)
    fitter.add(trace)
    with pytest.raises(RuntimeError, match="last-turn pass saw other rows"):
        fitter.finish()


@pytest.mark.parametrize("rows", [89, 10_000])
def test_a_sorted_parquet_is_marked_from_two_columns_as_the_reader_would(rows, tmp_path):
    trace = conversational_trace(seed=4)  # files hold an id on every row or on none
    write_trace(trace, tmp_path / "t.parquet")
    fast = lt._sorted_parquet_last_turns(tmp_path / "t.parquet", "auto", rows, skip_bad_rows=False)
    assert fast is not None
    np.testing.assert_array_equal(fast.of(0, len(trace)), _expected_last(trace))
    read = lt.mark_last_turns(_chunks(trace, rows))
    assert (fast.rows, fast.checksum) == (read.rows, read.checksum)


def test_a_parquet_out_of_time_order_is_marked_through_the_reader(tmp_path):
    trace = conversational_trace(seed=4)
    swapped = trace.copy()
    swapped.iloc[[10, 11]] = swapped.iloc[[11, 10]].to_numpy()  # the reader sorts the chunk back
    write_trace(swapped, tmp_path / "t.parquet")
    assert lt._sorted_parquet_last_turns(tmp_path / "t.parquet", "auto", 1_000, skip_bad_rows=False) is None
    marks = lt.last_turns_of_file(tmp_path / "t.parquet", "auto", 1_000, skip_bad_rows=False)
    np.testing.assert_array_equal(marks.of(0, len(trace)), _expected_last(trace))
