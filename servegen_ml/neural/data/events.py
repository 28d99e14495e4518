"""Canonical trace -> per-client event streams: client-major numpy columns, in memory or on disk.

An :class:`EventStore` holds every event of a trace grouped by client (client
``c`` owns rows ``offsets[c]:offsets[c + 1]``, sorted by time). It is built in
two passes over an iterable of canonical chunks, so a trace larger than memory
is streamed from Parquet into column files (one ``.npy`` each, a
:class:`DiskColumn`); an in-memory trace is the one-chunk case.

A disk column is read and written by position: a range is read into a new
array, a gather or scatter maps the file for that one operation only. No
mapping outlives the access, so the process's resident set holds what a step
uses, never the pages of the whole store (mapped pages count in it and would
grow with the events).

Rank shards (DDP): :class:`StoreSource` scans the trace once (clients, counts,
window, marks) and builds the store of one rank's clients
(:func:`shard_owner`): every rank keeps the whole client index, so client
rows, embeddings and per-client statistics line up across ranks, but holds
only its own clients' events.

Columns (N events): ``time_s`` float64 timeline position; ``input`` int32 base
prompt tokens (input minus the items' tokens when items are part of the input);
``output`` int32; ``reasoning`` int32 (if present); per modality ``m`` with
items: ``{m}_count`` int32 and ``{m}_item_log`` float32 (mean log1p of its
items' tokens, 0 without items), plus the flat items in ``items[m]`` as
``(item_offsets (N + 1,) int64, item_tokens (M,) int32)``.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from servegen_ml.core.errors import UserError
from servegen_ml.stats.lattice import LatticeCounter
from servegen_ml.trace.schema import LIST_COLUMNS, list_lengths, list_values

# Timestamps above this are read as epoch seconds: the timeline then starts at that day's midnight (UTC).
EPOCH_THRESHOLD_S = 1e8
DAY_S = 86_400.0


class UnsortedChunksError(UserError):
    """A streamed trace goes back in time across chunks (the store needs time-sorted chunks)."""


@dataclass(frozen=True)
class MarkLayout:
    """Which marks a trace has, hence which heads a model has (heads for absent fields are absent)."""

    modalities: tuple[str, ...] = ()
    empty_modalities: tuple[str, ...] = ()
    items_in_input: bool = False
    has_text_tokens: bool = False
    has_reasoning: bool = False

    def count_fields(self) -> list[str]:
        """Integer marks scored by a count head, in conditioning order (items before the text part)."""
        fields = []
        for m in self.modalities:
            fields += [f"{m}_count", f"{m}_tokens"]
        return fields + ["input", "output"]

    def mark_columns(self) -> list[str]:
        """Per-event mark columns of a store (and of a sampled event's marks), items as count and mean log."""
        cols = ["input", "output"] + (["reasoning"] if self.has_reasoning else [])
        return cols + [f"{m}_{k}" for m in self.modalities for k in ("count", "item_log")]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> MarkLayout:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def timeline_origin(first_timestamp_s: float) -> float:
    """Where the learned timeline starts: 0 for relative timestamps, else the first day's midnight."""
    if first_timestamp_s < EPOCH_THRESHOLD_S:
        return 0.0
    return float(np.floor(first_timestamp_s / DAY_S) * DAY_S)


def item_arrays(chunk: pd.DataFrame, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """(items per row, flat item tokens) of a modality's list column."""
    col = chunk[f"{modality}_tokens"]
    return list_lengths(col), list_values(col)


@dataclass
class _LayoutScan:
    """Pass-1 accumulator: clients, counts, span and which marks exist."""

    columns: set[str] | None = None
    client_counts: dict[str, int] = field(default_factory=dict)
    first_s: float = np.inf
    last_s: float = -np.inf
    items_seen: dict[str, int] = field(default_factory=dict)
    item_totals: dict[str, dict[str, int]] = field(default_factory=dict)
    items_within_input: bool = True
    time_sum: float = 0.0  # a checksum of the timestamps (run fingerprints)
    lattice: LatticeCounter = field(default_factory=LatticeCounter)  # slots the log stamps times in

    def add(self, chunk: pd.DataFrame) -> None:
        cols = set(chunk.columns)
        if self.columns is None:
            self.columns = cols
        elif cols != self.columns:
            raise UserError(f"trace chunks disagree on columns: {sorted(cols ^ self.columns)}")
        if len(chunk) == 0:
            return
        ts = chunk["timestamp"].to_numpy(np.float64)
        if ts.min() < self.last_s:
            raise UnsortedChunksError(
                "trace is not sorted by timestamp across chunks; sort it (e.g. servegen-ml convert) before streaming"
            )
        self.first_s, self.last_s = min(self.first_s, ts.min()), max(self.last_s, ts.max())
        self.time_sum += float(ts.sum())
        self.lattice.add(ts)
        ids = chunk["client_id"].astype(str)
        for cid, n in ids.value_counts(sort=False).items():
            self.client_counts[cid] = self.client_counts.get(cid, 0) + int(n)
        item_sum = np.zeros(len(chunk), dtype=np.int64)
        for m in (c.split("_")[0] for c in LIST_COLUMNS if c in cols):
            counts, values = item_arrays(chunk, m)
            self.items_seen[m] = self.items_seen.get(m, 0) + int(counts.sum())
            per_client = pd.Series(counts).groupby(ids.to_numpy()).sum()
            totals = self.item_totals.setdefault(m, {})
            for cid, n in per_client.items():
                totals[cid] = totals.get(cid, 0) + int(n)
            item_sum += _row_sums(counts, values)
        if (item_sum > chunk["input_tokens"].to_numpy(np.int64)).any():
            self.items_within_input = False

    def layout(self) -> MarkLayout:
        present = [c.split("_")[0] for c in LIST_COLUMNS if c in (self.columns or set())]
        with_items = tuple(m for m in present if self.items_seen.get(m, 0) > 0)
        return MarkLayout(
            modalities=with_items,
            empty_modalities=tuple(m for m in present if m not in with_items),
            items_in_input=bool(with_items) and self.items_within_input,
            has_text_tokens="text_tokens" in (self.columns or set()),
            has_reasoning="reasoning_tokens" in (self.columns or set()),
        )


def _row_sums(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum of each row's items given per-row counts and the flat values."""
    ends = np.cumsum(counts)
    csum = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    return csum[ends] - csum[ends - counts]


@dataclass
class EventStore:
    """Client-major event columns of one trace (see module docstring)."""

    client_ids: list[str]
    offsets: np.ndarray
    layout: MarkLayout
    origin_s: float
    window_start_s: float
    window_end_s: float
    columns: dict[str, np.ndarray]
    items: dict[str, tuple[np.ndarray, np.ndarray]]
    directory: Path | None = None

    @property
    def n_events(self) -> int:
        return int(self.offsets[-1])

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def client_of(self, idx: np.ndarray) -> np.ndarray:
        """Client index of each event index."""
        return np.searchsorted(self.offsets, idx, side="right") - 1


def scan_chunks(chunks: Iterable[pd.DataFrame]) -> _LayoutScan:
    """Pass 1 over canonical, time-sorted chunks: clients and their counts, the span, which marks exist."""
    scan = _LayoutScan()
    for chunk in chunks:
        scan.add(chunk)
    if not scan.client_counts:
        raise UserError("trace has no events")
    return scan


def shard_owner(counts: np.ndarray, world: int) -> np.ndarray:
    """(C,) rank of each client: the busiest client first onto the rank with the fewest events so far.

    Deterministic (ties by client index), so every rank computes the same assignment.
    """
    owner = np.zeros(len(counts), dtype=np.int64)
    if world <= 1:
        return owner
    load = np.zeros(world, dtype=np.int64)
    for c in np.argsort(-np.asarray(counts), kind="stable"):
        rank = int(np.argmin(load))
        owner[c] = rank
        load[rank] += counts[c]
    return owner


def build_store(
    chunks: Callable[[], Iterable[pd.DataFrame]],
    client_ids: list[str] | None = None,
    layout: MarkLayout | None = None,
    origin_s: float | None = None,
    window: tuple[float | None, float | None] = (None, None),
    directory: str | Path | None = None,
    scan: _LayoutScan | None = None,
    shard: tuple[int, int] = (0, 1),
) -> EventStore:
    """Two passes over ``chunks()`` (canonical, time-sorted) -> :class:`EventStore`.

    ``client_ids`` fixes the client index (ids not in it are appended in sorted
    order); ``layout``/``origin_s`` default to those detected from the trace.
    ``window`` is the observation window in trace timestamps (default: first and
    last timestamp). With ``directory`` the columns are files there (:class:`DiskColumn`).
    ``scan``: pass 1 already done (:func:`scan_chunks`). ``shard=(rank, world)``
    keeps only the events of the clients :func:`shard_owner` gives to ``rank``.
    """
    scan = scan_chunks(chunks()) if scan is None else scan
    layout = layout or scan.layout()
    origin_s = timeline_origin(scan.first_s) if origin_s is None else origin_s
    known = list(client_ids or [])
    ids = known + sorted(set(scan.client_counts) - set(known))
    counts = np.array([scan.client_counts.get(c, 0) for c in ids], dtype=np.int64)
    rank, world = shard
    mine = shard_owner(counts, world) == rank
    offsets = np.concatenate([[0], np.cumsum(np.where(mine, counts, 0))])
    item_offsets = {
        m: np.concatenate(
            [[0], np.cumsum([scan.item_totals[m].get(c, 0) if own else 0 for c, own in zip(ids, mine)])]
        ).astype(np.int64)
        for m in layout.modalities
    }
    alloc = _allocator(directory)
    columns, items = _allocate(alloc, int(offsets[-1]), layout, item_offsets)
    writer = _Scatter(
        ids, offsets, item_offsets, layout, origin_s, columns, items, None if mine.all() else mine
    )
    for chunk in chunks():
        writer.add(chunk)
    writer.finish()
    start = scan.first_s if window[0] is None else float(window[0])
    end = scan.last_s if window[1] is None else float(window[1])
    return EventStore(
        client_ids=ids,
        offsets=offsets,
        layout=layout,
        origin_s=origin_s,
        window_start_s=start - origin_s,
        window_end_s=end - origin_s,
        columns=columns,
        items=items,
        directory=None if directory is None else Path(directory),
    )


@dataclass
class StoreSource:
    """A trace to train on: ``chunks()`` (re-iterable canonical chunks, time-sorted), scanned once.

    Everything every rank must agree on comes from the scan (clients, their
    counts, the window, the marks); :meth:`build` makes one rank's shard.
    ``directory``: where shards' column files go (None: in memory).
    """

    chunks: Callable[[], Iterable[pd.DataFrame]]
    directory: str | Path | None = None
    scan: _LayoutScan = field(init=False)

    def __post_init__(self) -> None:
        self.scan = scan_chunks(self.chunks())

    @property
    def client_ids(self) -> list[str]:
        return sorted(self.scan.client_counts)

    @property
    def counts(self) -> np.ndarray:
        """(C,) events per client in the whole trace."""
        return np.array([self.scan.client_counts[c] for c in self.client_ids], dtype=np.int64)

    @property
    def n_events(self) -> int:
        return int(sum(self.scan.client_counts.values()))

    @property
    def origin_s(self) -> float:
        return timeline_origin(self.scan.first_s)

    @property
    def window_s(self) -> tuple[float, float]:
        """(start, end) of the observation window on the learned timeline."""
        return self.scan.first_s - self.origin_s, self.scan.last_s - self.origin_s

    @property
    def layout(self) -> MarkLayout:
        return self.scan.layout()

    @property
    def time_quantum_s(self) -> float:
        """The slot the trace's times are stamped in (servegen_ml.stats.lattice), 0: none."""
        return self.scan.lattice.quantum()

    def fingerprint_data(self) -> list:
        """What identifies the trace for resuming a run (the same on every rank)."""
        return [self.n_events, *self.window_s, self.client_ids, self.scan.time_sum]

    def build(self, rank: int = 0, world: int = 1) -> EventStore:
        directory = None if self.directory is None else Path(self.directory) / f"rank{rank}"
        return build_store(self.chunks, directory=directory, scan=self.scan, shard=(rank, world))


def store_from_frame(trace: pd.DataFrame, **kwargs) -> EventStore:
    """:func:`build_store` of an in-memory canonical trace."""
    return build_store(lambda: [trace], **kwargs)


def _allocator(directory: str | Path | None):
    if directory is None:
        return lambda name, n, dtype: np.zeros(n, dtype=dtype)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    return lambda name, n, dtype: DiskColumn.create(root / f"{name}.npy", dtype, n)


def _column_dtypes(layout: MarkLayout) -> dict[str, type]:
    dtypes = {"time_s": np.float64, "input": np.int32, "output": np.int32}
    if layout.has_reasoning:
        dtypes["reasoning"] = np.int32
    for m in layout.modalities:
        dtypes[f"{m}_count"] = np.int32
        dtypes[f"{m}_item_log"] = np.float32
    return dtypes


def _allocate(alloc, n: int, layout: MarkLayout, item_offsets: dict[str, np.ndarray]):
    columns = {name: alloc(name, n, dt) for name, dt in _column_dtypes(layout).items()}
    items = {
        m: (
            alloc(f"{m}_item_offsets", n + 1, np.int64),
            alloc(f"{m}_item_tokens", int(item_offsets[m][-1]), np.int32),
        )
        for m in layout.modalities
    }
    return columns, items


class DiskColumn:
    """A 1-D ``.npy`` file read and written by position, with no mapping kept (module docstring).

    Indexing gives a new array: ``col[lo:hi]`` reads the range with ``pread``; ``col[idx]`` (an
    integer array) maps the file, gathers and unmaps; ``col[idx] = values`` maps it writable, assigns
    and unmaps (the written pages stay in the page cache, not in this process). Pickles as its path.
    """

    def __init__(self, path: Path, dtype: np.dtype, n: int, header: int):
        self.path, self.dtype, self.n, self.header = Path(path), np.dtype(dtype), int(n), int(header)

    @classmethod
    def create(cls, path: Path, dtype, n: int) -> DiskColumn:
        """A zero-filled column of ``n`` values (a sparse file until written)."""
        dtype = np.dtype(dtype)
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)}
            )
            header = f.tell()
            f.truncate(header + n * dtype.itemsize)
        return cls(path, dtype, n, header)

    @property
    def shape(self) -> tuple[int]:
        return (self.n,)

    def __len__(self) -> int:
        return self.n

    def __array__(self, dtype=None, copy=None):
        values = self[:]
        return values if dtype is None else values.astype(dtype, copy=False)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self.n)
            return self._read(start, max(start, stop)) if step == 1 else self._read(0, self.n)[key]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.n if key < 0 else 0)
            if not 0 <= i < self.n:
                raise IndexError(f"index {key} out of range for {self.path.name} ({self.n} values)")
            return self._read(i, i + 1)[0]
        idx = np.asarray(key)
        if idx.size == 0 or self.n == 0:  # nothing to map (mmap refuses an empty file)
            return np.zeros(0, self.dtype)[idx]
        mapping = self._map(mmap.ACCESS_READ)
        try:
            # The array over the mapping is a temporary: gone before the mapping closes.
            return self._over(mapping)[idx]
        finally:
            mapping.close()

    def __setitem__(self, key, values) -> None:
        if self.n == 0:
            np.zeros(0, self.dtype)[key] = values  # only an empty key is valid; numpy says what is wrong
            return
        mapping = self._map(mmap.ACCESS_WRITE)
        try:
            self._over(mapping)[key] = values
        finally:
            mapping.close()

    def _read(self, lo: int, hi: int) -> np.ndarray:
        out = np.empty(hi - lo, self.dtype)
        view, offset = memoryview(out).cast("B"), self.header + lo * self.dtype.itemsize
        fd = os.open(self.path, os.O_RDONLY)
        try:
            done = 0
            while done < len(view):
                got = os.preadv(fd, [view[done:]], offset + done)
                if got == 0:
                    raise OSError(f"{self.path} ends before value {hi} (a truncated store file)")
                done += got
        finally:
            os.close(fd)
        return out

    def _map(self, access: int) -> mmap.mmap:
        with open(self.path, "r+b" if access == mmap.ACCESS_WRITE else "rb") as f:
            return mmap.mmap(f.fileno(), self.header + self.n * self.dtype.itemsize, access=access)

    def _over(self, mapping: mmap.mmap) -> np.ndarray:
        return np.frombuffer(mapping, self.dtype, count=self.n, offset=self.header)


class _Scatter:
    """Pass 2: write each chunk's events to their client-major positions."""

    def __init__(self, ids, offsets, item_offsets, layout, origin_s, columns, items, keep=None):
        self.code = {cid: i for i, cid in enumerate(ids)}
        self.keep = keep  # (C,) bool: clients whose events this store holds (None: all)
        self.offsets, self.item_offsets = offsets, item_offsets
        self.layout, self.origin_s = layout, origin_s
        self.columns, self.items = columns, items
        self.filled = np.zeros(len(ids), dtype=np.int64)
        self.items_filled = {m: np.zeros(len(ids), dtype=np.int64) for m in layout.modalities}

    def add(self, chunk: pd.DataFrame) -> None:
        if len(chunk) == 0:
            return
        codes = chunk["client_id"].astype(str).map(self.code).to_numpy(np.int64)
        if self.keep is not None:
            rows = self.keep[codes]
            if not rows.all():
                chunk, codes = chunk[rows].reset_index(drop=True), codes[rows]
                if len(chunk) == 0:
                    return
        order = np.lexsort((chunk["timestamp"].to_numpy(), codes))
        c = codes[order]
        rank = rank_within(c)
        pos = self.offsets[c] + self.filled[c] + rank
        item_sum = self._write_items(chunk, order, c, pos)
        inputs = chunk["input_tokens"].to_numpy(np.int64)[order]
        self.columns["time_s"][pos] = chunk["timestamp"].to_numpy(np.float64)[order] - self.origin_s
        # A scored trace may break the training trace's input = text + items rule; its text part is then 0.
        self.columns["input"][pos] = (
            np.maximum(inputs - item_sum, 0) if self.layout.items_in_input else inputs
        )
        self.columns["output"][pos] = chunk["output_tokens"].to_numpy(np.int64)[order]
        if self.layout.has_reasoning:
            self.columns["reasoning"][pos] = chunk["reasoning_tokens"].to_numpy(np.int64)[order]
        self.filled += np.bincount(c, minlength=len(self.filled))

    def _write_items(self, chunk, order, c, pos) -> np.ndarray:
        total = np.zeros(len(order), dtype=np.int64)
        for m in self.layout.modalities:
            counts, values = item_arrays(chunk, m)
            row_start = np.concatenate([[0], np.cumsum(counts)])[:-1]
            counts = counts[order]
            # Flat item positions: each row's items keep their order, rows go to their client-major slots.
            rank_items = _cumsum_within(c, counts)
            first = self.item_offsets[m][c] + self.items_filled[m][c] + rank_items
            src = np.repeat(row_start[order], counts) + _arange_within(counts)
            dst = np.repeat(first, counts) + _arange_within(counts)
            tokens = values[src]
            self.items[m][1][dst] = tokens
            self.items[m][0][pos] = first
            self.columns[f"{m}_count"][pos] = counts
            sums = _row_sums(counts, tokens)
            log_sums = _row_sums_float(counts, np.log1p(tokens.astype(np.float64)))
            self.columns[f"{m}_item_log"][pos] = np.where(counts > 0, log_sums / np.maximum(counts, 1), 0.0)
            total += sums
            self.items_filled[m] += np.bincount(c, weights=counts, minlength=len(self.filled)).astype(
                np.int64
            )
        return total

    def finish(self) -> None:
        n = int(self.offsets[-1])
        for m in self.layout.modalities:
            self.items[m][0][n] = self.item_offsets[m][-1]


def rank_within(sorted_codes: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal codes (codes sorted)."""
    idx = np.arange(len(sorted_codes))
    starts = np.concatenate([[True], sorted_codes[1:] != sorted_codes[:-1]])
    return idx - np.maximum.accumulate(np.where(starts, idx, 0))


def _cumsum_within(sorted_codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum of ``values`` within each run of equal codes."""
    csum = np.cumsum(values) - values
    idx = np.arange(len(sorted_codes))
    starts = np.concatenate([[True], sorted_codes[1:] != sorted_codes[:-1]])
    run_start = np.maximum.accumulate(np.where(starts, idx, 0))
    return csum - csum[run_start]


def _arange_within(counts: np.ndarray) -> np.ndarray:
    """Concatenated aranges: [0..counts[0]), [0..counts[1]), ..."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - starts


def _row_sums_float(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    ends = np.cumsum(counts)
    csum = np.concatenate([[0.0], np.cumsum(values)])
    return csum[ends] - csum[ends - counts]


def iter_blocks(n: int, block: int = 4_000_000) -> Iterator[tuple[int, int]]:
    """(lo, hi) ranges covering [0, n) in blocks, for passes over disk columns."""
    for lo in range(0, n, block):
        yield lo, min(n, lo + block)
