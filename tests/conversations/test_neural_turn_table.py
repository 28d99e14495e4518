"""The neural conversation heads' turn table, chained in a stream: the same turns as the whole-frame roles."""

import numpy as np
import pandas as pd
import pytest

from servegen_ml.conversations.empirical import conversation_roles
from servegen_ml.conversations.last_turns import mark_last_turns
from servegen_ml.conversations.neural.table import TurnTableBuilder, build_turn_table
from servegen_ml.neural.data.events import UnsortedChunksError
from tests.factories import conversational_trace


def _chunks(frame: pd.DataFrame, rows: int):
    return lambda: (frame.iloc[i : i + rows].reset_index(drop=True) for i in range(0, len(frame), rows))


@pytest.mark.parametrize("rows", [1, 97, 100_000])
@pytest.mark.parametrize("on_disk", [False, True])
def test_streamed_turns_chain_like_the_whole_frame(rows, on_disk, tmp_path):
    trace = conversational_trace(seed=0, duration_s=1800.0)
    ids = trace["conversation_id"].astype(object).copy()
    ids.iloc[[3, 40]] = ""  # an empty id is no id, like a missing one
    ids.iloc[41] = None
    trace["conversation_id"] = ids
    chunks = _chunks(trace, rows)
    table = build_turn_table(chunks, mark_last_turns(chunks()), tmp_path / "turns" if on_disk else None)
    roles = conversation_roles(trace)
    turn, nxt = np.asarray(table.turn), np.asarray(table.next)
    labels = np.asarray(table.labels, dtype=object)[turn["client"]]
    client = trace["client_id"].astype(str).to_numpy(dtype=object)
    np.testing.assert_array_equal(labels, client[roles.opener_row])  # a conversation is its opener's client's
    np.testing.assert_array_equal(turn["position"], roles.position)
    t = trace["timestamp"].to_numpy(np.float64)
    np.testing.assert_array_equal(turn["opener_timestamp"], t[roles.opener_row])
    follow = np.flatnonzero(~roles.is_opener)
    prev = roles.predecessor[follow]
    next_t = np.full(len(t), np.nan)
    next_t[prev] = t[follow]
    np.testing.assert_array_equal(nxt["timestamp"], next_t)
    inp, out = trace["input_tokens"].to_numpy(), trace["output_tokens"].to_numpy()
    np.testing.assert_array_equal(nxt["input_tokens"][prev], inp[follow])
    np.testing.assert_array_equal(nxt["output_tokens"][prev], out[follow])
    np.testing.assert_array_equal(nxt["new_tokens"][prev], np.maximum(inp[follow] - inp[prev] - out[prev], 0))
    assert table.follow_ups == len(follow) > 0 and table.rows == len(trace)
    np.testing.assert_array_equal(table.opener_mask(0, len(trace)), roles.is_opener)


def test_open_conversations_are_only_those_with_a_later_turn():
    # Ten conversations one after the other: once a conversation's last turn has passed it is not held.
    frame = pd.DataFrame(
        {
            "timestamp": np.arange(40.0),
            "client_id": "c",
            "conversation_id": np.repeat([f"x{i}" for i in range(10)], 4),
            "input_tokens": 100,
            "output_tokens": 10,
        }
    )
    chunks = _chunks(frame, 4)
    builder = TurnTableBuilder(mark_last_turns(chunks()))
    for chunk in chunks():
        builder.add(chunk)
        assert len(builder._open.keys) == 0
    builder = TurnTableBuilder(mark_last_turns(_chunks(frame, 3)()))
    held = []
    for chunk in _chunks(frame, 3)():
        builder.add(chunk)
        held.append(len(builder._open.keys))
    assert max(held) == 1


def test_rows_going_back_in_time_are_refused():
    frame = conversational_trace(seed=0, duration_s=600.0)
    chunks = [frame.iloc[50:100], frame.iloc[:50]]
    with pytest.raises(UnsortedChunksError, match="back in time"):
        build_turn_table(lambda: iter(chunks), mark_last_turns(iter(chunks)))
