"""64-bit keys with a row number, spilled to disk in hash partitions: cross-chunk checks in bounded memory.

A set of every request id (or conversation id) of a trace grows with its rows:
8 bytes a key, 800 MB at 10^8 rows and twice that while the set is merged.
Instead each chunk's (key, row) pairs are sorted into :data:`PARTITIONS`
partitions by the key's top bits and appended to one temporary file, one
segment per partition; after the last chunk each partition (1/256 of the keys)
is gathered from its segments and sorted on its own. So memory is a chunk plus
one partition, the disk holds 16 bytes a row until :meth:`HashSpill.close` (or
the object is collected), and the cost is one sequential write and read.

The file is unlinked as soon as it is created (:func:`tempfile.TemporaryFile`):
the system frees it when the process ends however it ends, SIGKILL and power
loss included, so no run leaves a spill behind in the temporary directory.

Used for duplicate request ids (the validator), distinct conversations (the
trace summary), conversation statistics (characterize) and the last turns of
conversations (train).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

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
        self._file = None
        # Per chunk: the partition, first pair and pair count of each of its segments in the file.
        self._segments: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.pairs = 0
        # The most pairs held in memory at once: a chunk's when adding, a partition's when reading back.
        self.largest_chunk = self.largest_partition = 0

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        n = len(keys)
        if n == 0:
            return
        part = (np.asarray(keys, dtype=np.uint64) >> np.uint64(56)).astype(np.uint8)
        order = np.argsort(part, kind="stable")
        pairs = np.empty(n, dtype=self._pair)
        pairs["key"], pairs["value"] = keys[order], values[order]
        bounds = np.searchsorted(part[order], np.arange(PARTITIONS + 1))
        used = np.flatnonzero(np.diff(bounds))
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="servegen-spill-")
        self._file.write(pairs.tobytes())
        self._segments.append((used.astype(np.uint8), self.pairs + bounds[used], np.diff(bounds)[used]))
        if len(self._segments) >= 1024:  # tiny chunks: 17 bytes a segment, not three arrays each
            self._segments = [self._segment_table()]
        self.pairs += n
        self.largest_chunk = max(self.largest_chunk, n)

    def partitions(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(keys, values) of each non-empty partition, sorted by key and, within a key, in the order added."""
        if self._file is None:
            return
        self._file.flush()
        fd = self._file.fileno()
        part, first, count = self._segments[0] = self._segment_table()
        del self._segments[1:]
        by_part = np.argsort(part, kind="stable")  # segments of a partition in the order they were added
        bounds = np.searchsorted(part[by_part], np.arange(PARTITIONS + 1))
        size = self._pair.itemsize
        for p in np.flatnonzero(np.diff(bounds)):
            segments = by_part[bounds[p] : bounds[p + 1]]
            pairs = np.empty(int(count[segments].sum()), dtype=self._pair)
            buffer, at = memoryview(pairs.view(np.uint8)), 0
            for start, n in zip(first[segments].tolist(), count[segments].tolist(), strict=True):
                if os.preadv(fd, [buffer[at : at + n * size]], start * size) != n * size:
                    raise OSError(f"spill file {self._file.name}: short read (was it truncated?)")
                at += n * size
            self.largest_partition = max(self.largest_partition, len(pairs))
            order = np.argsort(pairs["key"], kind="stable")
            yield pairs["key"][order], pairs["value"][order]

    def _segment_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(np.concatenate(x) for x in zip(*self._segments))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._segments, self.pairs = None, [], 0


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
