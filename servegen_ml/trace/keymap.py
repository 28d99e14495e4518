"""Growing integer key -> value tables for state carried across streamed chunks.

Reading a large trace chunk by chunk still needs a little global memory:
request ids seen so far (duplicates), conversation roots (Bailian parent
chains), prefix-hash keys (Mooncake conversation inference). A Python dict
would hold one object per request; these tables hold sorted numpy arrays
instead (about 8 bytes per key plus the values) and stay vectorized.

Storage is a small log-structured merge: each ``update`` adds a sorted level,
and levels of similar size are merged, so inserting N keys costs O(N log N)
in total and a lookup searches O(log N) levels. Later updates win.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A fast 64-bit mixing function (SplitMix64 finalizer), elementwise on uint64."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


# Odd multiplier of the polynomial string hash (odd, so distinct short strings rarely collide mod 2**64).
_STRING_HASH_BASE = np.uint64(0x100000001B3 * 2 + 1)
_ALL_BITS = np.uint64(2**64 - 1)


def _string_array(values) -> pa.Array:
    if isinstance(values, (pd.Series, pd.Index)):
        values = values.array
    if isinstance(values, pd.api.extensions.ExtensionArray) and hasattr(values, "_pa_array"):
        arr = values._pa_array
    else:
        arr = pa.array(np.asarray(values, dtype=object), from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    return arr


def hash_strings(values) -> np.ndarray:
    """64-bit hashes of a string column, as uint64, computed on the Arrow buffers (no Python object per row).

    A polynomial hash of the UTF-8 bytes mixed with the length (SplitMix64);
    a missing value hashes like the empty string.
    """
    arr = _string_array(values)
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    offset_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=offset_type)[arr.offset : arr.offset + n + 1]
    offsets = offsets.astype(np.int64)
    lengths = np.diff(offsets)
    if arr.null_count:
        lengths = np.where(arr.is_null().to_numpy(zero_copy_only=False), 0, lengths)
    data = arr.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    # Horner's rule over 8-byte words (an unaligned little-endian view; the tail word is masked),
    # one word position at a time over the strings still running: arrays of one value per row.
    padded = np.zeros(len(data) + 8, dtype=np.uint8)
    padded[: len(data)] = data
    words = np.ndarray(shape=(len(data) + 1,), dtype="<u8", buffer=padded, strides=(1,))
    sums = np.zeros(n, dtype=np.uint64)
    rows = np.flatnonzero(lengths > 0)
    pos, left = offsets[rows], lengths[rows]
    running = np.zeros(len(rows), dtype=np.uint64)
    while len(rows):
        word = words[pos]
        tail = left < 8
        if tail.any():
            keep_bits = np.where(
                tail, (np.uint64(1) << (8 * left).astype(np.uint64)) - np.uint64(1), _ALL_BITS
            )
            word &= keep_bits
        running = running * _STRING_HASH_BASE + word
        pos, left = pos + 8, left - 8
        done = left <= 0
        if done.any():
            sums[rows[done]] = running[done]
            keep = ~done
            rows, pos, left, running = rows[keep], pos[keep], left[keep], running[keep]
    return splitmix64(sums ^ splitmix64(lengths.astype(np.uint64)))


def _last_per_key(keys: np.ndarray, values: np.ndarray, owned: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sort by key and keep the last occurrence of each key (later rows win); ``owned`` keys may be sorted in place."""
    if values.shape[1] == 0:
        # A plain key set: sort in place, no permutation array (the memory peak at 10^8 keys).
        keys = keys if owned else keys.copy()
        keys.sort()
    else:
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
    last = np.ones(len(keys), dtype=bool)
    last[:-1] = keys[1:] != keys[:-1]
    if last.all():
        return keys, values
    return keys[last], values[last]


class KeyMap:
    """uint64 key -> row of ``width`` int64 values; later updates overwrite earlier ones."""

    def __init__(self, width: int = 0):
        self.width = width
        self._levels: list[tuple[np.ndarray, np.ndarray]] = []  # oldest first

    def __len__(self) -> int:
        """Stored entries; equals the distinct keys when callers only insert keys not yet present."""
        return sum(len(k) for k, _ in self._levels)

    def update(self, keys: np.ndarray, values: np.ndarray | None = None) -> None:
        keys = np.asarray(keys, dtype=np.uint64)
        if values is None:
            values = np.zeros((len(keys), self.width), dtype=np.int64)
        values = np.asarray(values, dtype=np.int64).reshape(len(keys), self.width)
        if len(keys) == 0:
            return
        self._levels.append(_last_per_key(keys, values))
        # Merge while the newest level is at least half the size of the one before it.
        while len(self._levels) > 1 and 2 * len(self._levels[-1][0]) >= len(self._levels[-2][0]):
            newer, older = self._levels.pop(), self._levels.pop()
            merged_keys = np.concatenate([older[0], newer[0]])
            merged_values = np.concatenate([older[1], newer[1]])
            del newer, older  # let the two levels go before sorting
            self._levels.append(_last_per_key(merged_keys, merged_values, owned=True))

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, values) for each key; values of missing keys are 0."""
        keys = np.asarray(keys, dtype=np.uint64)
        found = np.zeros(len(keys), dtype=bool)
        values = np.zeros((len(keys), self.width), dtype=np.int64)
        for level_keys, level_values in reversed(self._levels):  # newest first
            todo = np.flatnonzero(~found)
            if len(todo) == 0:
                break
            pos = np.searchsorted(level_keys, keys[todo])
            pos_ok = np.minimum(pos, len(level_keys) - 1)
            hit = (pos < len(level_keys)) & (level_keys[pos_ok] == keys[todo])
            found[todo[hit]] = True
            values[todo[hit]] = level_values[pos_ok[hit]]
        return found, values

    def contains(self, keys: np.ndarray) -> np.ndarray:
        return self.lookup(keys)[0]
