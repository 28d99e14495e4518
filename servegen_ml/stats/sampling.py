"""A mergeable uniform sample of a stream (bottom-k by random key).

Every item gets a uniform random key; the sample keeps the ``size`` items with
the smallest keys. That is a uniform sample without replacement of everything
seen, whatever the chunking, and two samples merge by keeping the smallest keys
of their union. Rows are returned in arrival order.
"""

from __future__ import annotations

import numpy as np


class Reservoir:
    def __init__(self, size: int, rng: np.random.Generator):
        self.size = int(size)
        self.rng = rng
        self.seen = 0
        self.keys = np.zeros(0)
        self.order = np.zeros(0, dtype=np.int64)
        self.columns: dict[str, np.ndarray] = {}

    def add(self, **columns: np.ndarray) -> None:
        n = len(next(iter(columns.values())))
        if n == 0:
            return
        keys = self.rng.random(n)
        order = np.arange(self.seen, self.seen + n, dtype=np.int64)
        self.seen += n
        if not self.columns:
            self.columns = {k: np.zeros(0, dtype=np.asarray(v).dtype) for k, v in columns.items()}
        if len(self.keys) == self.size:
            # once full, only keys below the current largest kept key can enter
            enter = keys < self.keys.max()
            keys, order = keys[enter], order[enter]
            columns = {k: np.asarray(v)[enter] for k, v in columns.items()}
        all_keys = np.concatenate([self.keys, keys])
        keep = np.argpartition(all_keys, self.size)[: self.size] if len(all_keys) > self.size else slice(None)
        self.keys = all_keys[keep]
        self.order = np.concatenate([self.order, order])[keep]
        self.columns = {k: np.concatenate([self.columns[k], np.asarray(v)])[keep] for k, v in columns.items()}

    def sample(self) -> dict[str, np.ndarray]:
        """The kept rows, in the order they arrived."""
        arrival = np.argsort(self.order, kind="stable")
        return {k: v[arrival] for k, v in self.columns.items()}
