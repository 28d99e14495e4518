"""64-bit keys with a row number, spilled to disk in hash partitions: cross-chunk checks in bounded memory.

A set of every request id (or conversation id) of a trace grows with its rows:
8 bytes a key, 800 MB at 10^8 rows and twice that while the set is merged.
Instead each chunk's (key, row) pairs are appended to one of
:data:`PARTITIONS` temporary files by the key's top bits; after the last
chunk each partition (1/256 of the keys) is read and sorted on its own. So
memory is a chunk plus one partition, the disk holds 16 bytes a row until
:meth:`HashSpill.close` (or the object is collected), and the cost is one
sequential write and read. Used for duplicate request ids (the validator),
distinct conversations (the trace summary) and conversation statistics
(characterize).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np

PARTITIONS = 256


class HashSpill:
    """Append (uint64 key, value) pairs chunk by chunk; then read them back partition by partition.

    Keys are expected to be well-mixed hashes (the partition is the top 8 bits).
    Values are a row number (int64) or a time (float64, ``value_dtype``); a
    stable sort by key keeps each key's values in the order they were added.
    """

    def __init__(self, value_dtype=np.int64):
        self._pair = np.dtype([("key", "<u8"), ("value", np.dtype(value_dtype).newbyteorder("<"))])
        self._dir: Path | None = None
        self._finalizer = None
        self.pairs = 0
        # The most pairs held in memory at once: a chunk's when adding, a partition's when reading back.
        self.largest_chunk = self.largest_partition = 0

    def _directory(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="servegen-spill-"))
            # Removed when this object goes away, also when a consumer stops a stream early.
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        return self._dir

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        n = len(keys)
        if n == 0:
            return
        part = (np.asarray(keys, dtype=np.uint64) >> np.uint64(56)).astype(np.uint8)
        order = np.argsort(part, kind="stable")
        pairs = np.empty(n, dtype=self._pair)
        pairs["key"], pairs["value"] = keys[order], values[order]
        bounds = np.searchsorted(part[order], np.arange(PARTITIONS + 1))
        directory = self._directory()
        for p in np.flatnonzero(np.diff(bounds)):
            with open(directory / f"{p:03d}.bin", "ab") as f:
                f.write(pairs[bounds[p] : bounds[p + 1]].tobytes())
        self.pairs += n
        self.largest_chunk = max(self.largest_chunk, n)

    def partitions(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(keys, values) of each non-empty partition, sorted by key and, within a key, in the order added."""
        if self._dir is None:
            return
        for p in range(PARTITIONS):
            path = self._dir / f"{p:03d}.bin"
            if not path.exists():
                continue
            pairs = np.fromfile(path, dtype=self._pair)
            self.largest_partition = max(self.largest_partition, len(pairs))
            order = np.argsort(pairs["key"], kind="stable")
            yield pairs["key"][order], pairs["value"][order]

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._dir, self._finalizer, self.pairs = None, None, 0


def repeated_rows(spill: HashSpill) -> tuple[np.ndarray, np.ndarray]:
    """(rows whose key an earlier row has, that earlier first row), both sorted by the repeating row;
    the values of ``spill`` are row numbers, added in increasing order."""
    found, first_of = [], []
    for keys, rows in spill.partitions():
        repeat = np.flatnonzero(keys[1:] == keys[:-1]) + 1
        if len(repeat):
            starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
            first = rows[starts[np.searchsorted(starts, repeat, side="right") - 1]]
            found.append(rows[repeat])
            first_of.append(first)
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows, first = np.concatenate(found), np.concatenate(first_of)
    order = np.argsort(rows, kind="stable")
    return rows[order], first[order]


def distinct_keys(spill: HashSpill) -> int:
    """How many distinct keys were added."""
    return sum(int(np.count_nonzero(np.r_[True, keys[1:] != keys[:-1]])) for keys, _ in spill.partitions())
