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


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A fast 64-bit mixing function (SplitMix64 finalizer), elementwise on uint64."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_strings(values) -> np.ndarray:
    """64-bit hashes of a string column (pandas' vectorized hashing), as uint64."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    return pd.util.hash_pandas_object(series.astype(str), index=False).to_numpy(dtype=np.uint64)


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
