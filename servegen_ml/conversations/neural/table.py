"""The neural conversation heads' turn table, chained in one streamed pass in bounded memory.

Every request is a turn that may be followed. Rows are chained into
conversations as :func:`~servegen_ml.conversations.empirical.conversation_roles`
does (by id, in arrival order; a row without an id, or with an empty one, is a
conversation of one; a conversation belongs to its opener's client), over
time-sorted chunks: ids are keyed by 64-bit hashes (as in
:mod:`servegen_ml.conversations.fit`; two ids sharing a hash would be chained),
and given the rows that are their id's last
(:mod:`~servegen_ml.conversations.last_turns`), a conversation is dropped
from the open set at its last turn, so memory holds the chunk and the
conversations with a later turn, never the rows.

Each row's record goes to its row of the table as it arrives (its client,
position, tokens, time and its opener's time); the turn after it, once it
arrives, writes its time and tokens into the row's second record. With a
``directory`` both record arrays are files read and written by position
(:class:`~servegen_ml.neural.data.events.DiskColumn`, nothing kept mapped);
without one they are arrays in memory (an in-memory trace).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from servegen_ml.conversations.last_turns import (
    LastTurns,
    OpenConversations,
    conversation_keys,
    runs_by_conversation,
)
from servegen_ml.neural.data.events import DiskColumn, UnsortedChunksError

# Rows per block when a pass reads the table back.
BLOCK_ROWS = 1 << 20

TURN = np.dtype(
    [
        ("client", np.int64),  # the opener's client label (TurnTable.labels)
        ("position", np.int64),  # 1-based, in arrival order
        ("input_tokens", np.int64),
        ("output_tokens", np.int64),
        ("timestamp", np.float64),  # the trace's (the timeline origin is known only after the TPP fit)
        ("opener_timestamp", np.float64),
    ]
)
NEXT = np.dtype(
    [
        ("timestamp", np.float64),  # NaN: a last turn
        ("new_tokens", np.int64),  # the turn after's prompt beyond this turn's input and output
        ("input_tokens", np.int64),
        ("output_tokens", np.int64),
    ]
)


@dataclass
class TurnTable:
    """One row per request (trace order): ``turn`` and ``next`` records (module docstring)."""

    turn: np.ndarray | DiskColumn  # (n,) TURN records
    next: np.ndarray | DiskColumn  # (n,) NEXT records
    labels: list[str]  # client labels, in order of first opener
    rows: int
    follow_ups: int
    first_s: float  # first and last timestamp
    last_s: float

    def blocks(self, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first row, turn records, next records) of rows [lo, hi) in blocks of BLOCK_ROWS."""
        hi = self.rows if hi is None else hi
        for start in range(lo, hi, BLOCK_ROWS):
            stop = min(hi, start + BLOCK_ROWS)
            yield start, np.asarray(self.turn[start:stop]), np.asarray(self.next[start:stop])

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(turn records, next records) of the given rows."""
        return np.asarray(self.turn[rows]), np.asarray(self.next[rows])

    def opener_mask(self, start: int, n: int) -> np.ndarray:
        """Whether each of rows ``start .. start + n - 1`` opens its conversation."""
        return np.asarray(self.turn[start : start + n])["position"] == 1


class TurnTableBuilder:
    """Chains time-sorted chunks into a :class:`TurnTable` (``rows``: the trace's row count, from the
    last-turn pass, which also gives the bitmap ``last_turns``)."""

    def __init__(self, last_turns: LastTurns, directory: str | Path | None = None):
        self.last_turns = last_turns
        n = last_turns.rows
        if directory is None:
            self.turn, self.next = np.zeros(n, TURN), np.zeros(n, NEXT)
        else:
            root = Path(directory)
            root.mkdir(parents=True, exist_ok=True)
            self.turn = DiskColumn.create(root / "turns.npy", TURN, n)
            self.next = DiskColumn.create(root / "next.npy", NEXT, n)
        self.rows, self.follow_ups = 0, 0
        self.first_s, self.last_s = np.inf, -np.inf
        self._labels: dict[str, int] = {}
        self._open = OpenConversations(
            client=np.int64,
            position=np.int64,
            row=np.int64,
            input=np.int64,
            output=np.int64,
            opener_t=np.float64,
        )  # row: the conversation's last row so far

    def add(self, chunk: pd.DataFrame) -> None:
        n = len(chunk)
        if n == 0:
            return
        t = chunk["timestamp"].to_numpy(np.float64)
        if t[0] < self.last_s or (np.diff(t) < 0).any():
            raise UnsortedChunksError(
                f"row {self.rows + 1:,}: the trace goes back in time; conversations are chained on a "
                "time-sorted trace (servegen-ml convert sorts it)"
            )
        inp = chunk["input_tokens"].to_numpy(np.int64)
        out = chunk["output_tokens"].to_numpy(np.int64)
        has_id, key = conversation_keys(chunk)
        ends = self.last_turns.of(self.rows, n)
        # By conversation, then arrival (the rows are in time order).
        order, same, open_pos = runs_by_conversation(key, has_id, self._open.find)
        k, has = key[order], has_id[order]
        carried = open_pos >= 0
        seg_start = np.flatnonzero(~same)
        seg = np.cumsum(~same) - 1
        continues = carried[seg_start]
        at = open_pos[seg_start[continues]]
        o = self._open
        seg_client = np.empty(len(seg_start), dtype=np.int64)
        seg_client[continues] = o.client[at]
        seg_client[~continues] = self._codes(chunk["client_id"].to_numpy()[order[seg_start[~continues]]])
        seg_before = np.zeros(len(seg_start), dtype=np.int64)
        seg_before[continues] = o.position[at]
        t_s, inp_s, out_s = t[order], inp[order], out[order]
        seg_opener_t = t_s[seg_start].copy()
        seg_opener_t[continues] = o.opener_t[at]
        row_s = self.rows + order  # table row of each sorted row
        prev_row = np.full(n, -1, dtype=np.int64)
        prev_in, prev_out = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        prev_row[1:][same[1:]] = row_s[:-1][same[1:]]
        prev_in[1:][same[1:]], prev_out[1:][same[1:]] = inp_s[:-1][same[1:]], out_s[:-1][same[1:]]
        prev_row[carried] = o.row[open_pos[carried]]
        prev_in[carried], prev_out[carried] = o.input[open_pos[carried]], o.output[open_pos[carried]]

        turn = np.empty(n, TURN)
        turn["client"][order] = seg_client[seg]
        turn["position"][order] = np.arange(n) - seg_start[seg] + 1 + seg_before[seg]
        turn["input_tokens"], turn["output_tokens"], turn["timestamp"] = inp, out, t
        turn["opener_timestamp"][order] = seg_opener_t[seg]
        self.turn[self.rows : self.rows + n] = turn
        empty = np.zeros(n, NEXT)
        empty["timestamp"] = np.nan
        self.next[self.rows : self.rows + n] = empty
        follow = np.flatnonzero(prev_row >= 0)
        if len(follow):
            nxt = np.empty(len(follow), NEXT)
            nxt["timestamp"], nxt["input_tokens"], nxt["output_tokens"] = (
                t_s[follow],
                inp_s[follow],
                out_s[follow],
            )
            nxt["new_tokens"] = np.maximum(inp_s[follow] - prev_in[follow] - prev_out[follow], 0)
            self.next[prev_row[follow]] = nxt
        self.follow_ups += len(follow)

        # Each id's last segment stays open unless its last row is the id's last turn.
        seg_end = np.r_[seg_start[1:], n] - 1
        stays = has[seg_start] & ~ends[order[seg_end]]
        e = seg_end[stays]
        position = turn["position"][order]
        self._open.drop(open_pos[carried])
        self._open.insert(
            k[e],
            seg_client[stays],
            position[e],
            row_s[e],
            inp_s[e],
            out_s[e],
            seg_opener_t[stays],
        )
        self.rows += n
        self.first_s, self.last_s = min(self.first_s, float(t[0])), float(t[-1])

    def _codes(self, labels: np.ndarray) -> np.ndarray:
        """Client codes in order of each label's first opener."""
        inverse, uniques = pd.factorize(pd.Series(labels, dtype=object).astype(str), sort=False)
        known = np.array(
            [self._labels.setdefault(str(x), len(self._labels)) for x in uniques], dtype=np.int64
        )
        return known[inverse] if len(known) else np.zeros(0, dtype=np.int64)

    def finish(self) -> TurnTable:
        if self.rows != self.last_turns.rows:
            raise RuntimeError(
                f"the last-turn pass saw {self.last_turns.rows:,} rows, the turn pass {self.rows:,}; "
                "conversations would be cut"
            )
        return TurnTable(
            self.turn, self.next, list(self._labels), self.rows, self.follow_ups, self.first_s, self.last_s
        )


def build_turn_table(
    chunks: Callable[[], Iterable[pd.DataFrame]], last_turns: LastTurns, directory: str | Path | None = None
) -> TurnTable:
    """The turn table of ``chunks()`` (canonical, time-sorted, with ``conversation_id``)."""
    builder = TurnTableBuilder(last_turns, directory)
    for chunk in chunks():
        builder.add(chunk)
    return builder.finish()
