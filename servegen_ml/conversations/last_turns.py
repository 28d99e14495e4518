"""Which rows are the last turn of their conversation id: a first pass over the trace, in bounded memory.

The streamed conversation fit keeps a conversation open while a later row may
continue it. Without knowing which rows end their conversation, that is
every conversation active within ``idle_s`` (6 h): 25 M open records at 10^8
rows. This pass marks each id's last row, so the fit closes a conversation at
that row and keeps open only conversations with a later turn. Each row's (id
hash, row number) goes to a :class:`~servegen_ml.trace.spill.HashSpill`; per
partition the largest row of each hash is the last turn; those rows are set in
a bitmap over the rows (1 bit a row, 12.5 MB at 10^8 rows). Row numbers count
the rows in the order the fit receives them (each validated chunk sorted by
time), so the pass reads the trace as the fit does. A checksum of the (hash,
row) pairs lets the fit confirm that it saw the same rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from servegen_ml.trace.io import TraceReader, resolve_format
from servegen_ml.trace.keymap import hash_strings
from servegen_ml.trace.readers import container_of, open_parquet
from servegen_ml.trace.schema import STRING_DTYPE
from servegen_ml.trace.spill import HashSpill

_MASK64 = (1 << 64) - 1


def conversation_keys(chunk: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(has an id, 64-bit id hash; 0 without an id) per row: a missing or empty id is no id."""
    n = len(chunk)
    has_id = np.zeros(n, dtype=bool)
    key = np.zeros(n, dtype=np.uint64)
    if "conversation_id" in chunk.columns:
        ids = chunk["conversation_id"].reset_index(drop=True)
        has_id = ~(ids.isna() | (ids == "")).to_numpy(dtype=bool)
        if has_id.any():
            key[has_id] = hash_strings(ids[has_id])
    return has_id, key


def runs_by_conversation(key: np.ndarray, has_id: np.ndarray, find_open) -> tuple[np.ndarray, ...]:
    """A chunk's rows grouped for chaining: ``order`` sorts them by conversation (rows without an id
    alone), then arrival; ``same[i]``: sorted row i continues row i - 1's id; ``open_pos[i]``: for
    the first sorted row of an id, its position among the open conversations (``find_open(keys) ->
    (found, pos)``), else -1."""
    n = len(key)
    lone = np.where(has_id, 0, 1 + np.arange(n))
    order = np.lexsort((np.arange(n), key, lone))
    k, has = key[order], has_id[order]
    same = np.r_[False, (k[1:] == k[:-1]) & has[1:] & has[:-1]]
    firsts = np.flatnonzero(~same & has)
    found, pos = find_open(k[firsts])
    open_pos = np.full(n, -1, dtype=np.int64)
    open_pos[firsts[found]] = pos[found]
    return order, same, open_pos


class OpenConversations:
    """Open conversations as arrays sorted by id hash: ``keys`` and one array per field (the state that
    crosses chunks). Inserting merges by position instead of re-sorting, so a chunk costs one copy of
    one field at a time."""

    def __init__(self, **fields):
        """``fields``: name -> dtype of each array kept beside the keys."""
        self.fields = ("keys", *fields)
        self.keys = np.zeros(0, dtype=np.uint64)
        for name, dtype in fields.items():
            setattr(self, name, np.zeros(0, dtype=dtype))

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(open?, position) of each key."""
        if len(self.keys) == 0:
            return np.zeros(len(keys), dtype=bool), np.zeros(len(keys), dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[pos] == keys, pos

    def drop(self, pos: np.ndarray) -> None:
        if len(pos) == 0:
            return
        keep = np.ones(len(self.keys), dtype=bool)
        keep[pos] = False
        for name in self.fields:
            setattr(self, name, getattr(self, name)[keep])

    def insert(self, *columns) -> None:
        """Add conversations whose keys (sorted, none open) are given first, then their fields in order."""
        at = np.searchsorted(self.keys, columns[0])
        for name, new in zip(self.fields, columns, strict=True):
            old = getattr(self, name)
            setattr(self, name, np.insert(old, at, np.asarray(new).astype(old.dtype, copy=False)))


def pair_checksum(key: np.ndarray, has_id: np.ndarray, first_row: int) -> int:
    """Sum (mod 2**64) of hash XOR row number over the rows with an id; rows number from ``first_row``."""
    rows = np.flatnonzero(has_id).astype(np.uint64) + np.uint64(first_row)
    return int(np.bitwise_xor(key[has_id], rows).sum(dtype=np.uint64))


class LastTurns:
    """A bitmap of the rows that are their conversation id's last, with the row count and checksum."""

    def __init__(self, bits: np.ndarray, rows: int, checksum: int):
        self.bits, self.rows, self.checksum = bits, rows, checksum

    def of(self, start: int, n: int) -> np.ndarray:
        """Whether each of rows ``start .. start + n - 1`` is a last turn."""
        if start + n > self.rows:
            raise RuntimeError(f"the fit got more rows ({start + n:,}) than the first pass ({self.rows:,})")
        first, stop = start >> 3, (start + n + 7) >> 3
        flags = np.unpackbits(self.bits[first:stop], bitorder="little").astype(bool)
        return flags[start - (first << 3) :][:n]


def mark_last_turns(chunks: Iterable[pd.DataFrame]) -> LastTurns:
    """The last-turn bitmap of the rows of ``chunks`` (in the order the fit will receive them)."""
    spill = HashSpill()
    rows, checksum = 0, 0
    try:
        for chunk in chunks:
            has_id, key = conversation_keys(chunk)
            if has_id.any():
                spill.add(key[has_id], rows + np.flatnonzero(has_id))
                checksum = (checksum + pair_checksum(key, has_id, rows)) & _MASK64
            rows += len(chunk)
        bits = np.zeros((rows + 7) >> 3, dtype=np.uint8)
        for keys, values in spill.partitions():
            # Within a hash the rows come in the order added, increasing: the run's end is the last turn.
            last = values[np.r_[keys[1:] != keys[:-1], True]]
            np.bitwise_or.at(bits, last >> 3, np.left_shift(1, last & 7).astype(np.uint8))
    finally:
        spill.close()
    return LastTurns(bits, rows, checksum)


def last_turns_of_file(
    path: str | Path, format: str, chunk_rows: int, skip_bad_rows: bool, **adapter_options
) -> LastTurns | None:
    """:func:`mark_last_turns` over a trace file read as ``train`` reads it; None when it has no
    conversation ids or its rows go back in time across chunks (the fit then reads it into memory)."""
    marks = _sorted_parquet_last_turns(Path(path), format, chunk_rows, skip_bad_rows)
    if marks is not None:
        return marks
    reader = TraceReader(path, format, chunk_rows, skip_bad_rows, **adapter_options)
    unusable = False

    def chunks():
        nonlocal unusable
        for chunk in reader:
            if "conversation_id" not in chunk.columns or reader.report.globally_unsorted:
                unusable = True
                return
            yield chunk[["conversation_id"]]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fit's own pass gives the same warnings
        marks = mark_last_turns(chunks())
    return None if unusable else marks


class _NotInFileOrder(Exception):
    pass


def _sorted_parquet_last_turns(path: Path, format: str, chunk_rows: int, skip_bad_rows: bool):
    """The marks from two columns of a native Parquet trace whose rows are already in time order
    (so the fit receives them in file order, whatever its chunks); None when that does not hold."""
    if skip_bad_rows or container_of(path) != "parquet" or resolve_format(path, format) != "native":
        return None
    with open_parquet(path) as pf:
        schema = pf.schema_arrow
        if "conversation_id" not in schema.names or "timestamp" not in schema.names:
            return None
        id_type, t_type = schema.field("conversation_id").type, schema.field("timestamp").type
        if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type)):
            return None
        if not (pa.types.is_floating(t_type) or pa.types.is_integer(t_type)):
            return None

        def chunks():
            last_t = -np.inf
            for batch in pf.iter_batches(batch_size=chunk_rows, columns=["timestamp", "conversation_id"]):
                t = batch.column("timestamp").to_numpy(zero_copy_only=False).astype(np.float64)
                if len(t) and (t[0] < last_t or (np.diff(t) < 0).any() or np.isnan(t).any()):
                    raise _NotInFileOrder
                last_t = t[-1] if len(t) else last_t
                yield batch.select(["conversation_id"]).to_pandas(types_mapper=_strings)

        try:
            return mark_last_turns(chunks())
        except _NotInFileOrder:
            return None


def _strings(typ: pa.DataType):
    return STRING_DTYPE if pa.types.is_string(typ) or pa.types.is_large_string(typ) else None
