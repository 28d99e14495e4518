"""Bounded value tables: exact value -> count tables, compressed onto a fixed grid past a cap or a budget.

A table (one field of one client in one data window) keeps every distinct
value exactly while it holds at most :data:`VALUE_CAP` of them; that covers
the tables of the traces the shipped checkpoints were fitted on (at most
26,008 distinct values in one table), so they fit exactly as before. A table
past the cap, or, when all tables together hold more than
:data:`ENTRY_BUDGET` entries, the largest tables until they hold three
quarters of it, are *binned*:

* token counts below :data:`EXACT_BELOW` stay exact (the short prompts and
  answers, where LLM length spikes such as fixed templates and small
  ``max_tokens`` sit); larger counts go to log-spaced bins,
  :data:`BINS_PER_OCTAVE` per doubling (4.4 % wide), whose mass is sampled
  uniformly over the bin's integers (``width`` in the pool's pmfs);
* the reasoning ratio (4 decimals) is rounded to 3 decimals.

A binned table has at most ``EXACT_BELOW + 24 * BINS_PER_OCTAVE`` = 640
entries (1,001 for the ratio), so memory is set by the budget and the number
of tables (clients x windows), never by rows or distinct values.

Why a fixed grid rather than quantile bins: the grid does not depend on the
data, so binning commutes with adding counts, tables of different windows
merge bin by bin (a client's whole-trace table is binned where any of its
windows is), and a table binned for the cap is the same whatever the chunking.
Budget decisions are taken at fixed row counts of the stream
(:data:`CHECK_ROWS`), so they do not depend on the chunking either. The cost
against the exact table is a Kolmogorov-Smirnov distance of at most the
largest bin's share of the requests (the two CDFs agree at every bin edge):
about 1.7 % for log-normal lengths of log-sd 1, less for wider ones.
"""

from __future__ import annotations

import numpy as np

from servegen_ml.core.errors import UserError

VALUE_CAP = 32_768
ENTRY_BUDGET = 4_194_304
CHECK_ROWS = 1 << 21
EXACT_BELOW = 256
BINS_PER_OCTAVE = 16
RATIO_STEP = 10  # ratio codes are ratio * 10**4; binned ones are multiples of 10 (3 decimals)
RATIO_SCALE = 10_000
MAX_CODE = (1 << 32) - 1
# Bin lower edges from EXACT_BELOW to beyond 2**32 (the pool's largest integer key).
_EDGES = np.unique(np.ceil(EXACT_BELOW * 2.0 ** (np.arange(25 * BINS_PER_OCTAVE + 2) / BINS_PER_OCTAVE)))


def bin_lower(value: np.ndarray) -> np.ndarray:
    """A token count itself below EXACT_BELOW, else the lower edge of its grid bin (monotone in value)."""
    value = np.asarray(value)
    j = np.searchsorted(_EDGES, value, side="right") - 1
    return np.where(value < EXACT_BELOW, value, _EDGES[np.maximum(j, 0)]).astype(value.dtype)


def bin_width(lower: np.ndarray) -> np.ndarray:
    """Integers spanned by the entry at ``lower`` of a binned token table (1 below EXACT_BELOW)."""
    lower = np.asarray(lower, dtype=np.float64)
    j = np.clip(np.searchsorted(_EDGES, lower, side="right") - 1, 0, len(_EDGES) - 2)
    return np.where(lower < EXACT_BELOW, 1.0, _EDGES[j + 1] - _EDGES[j])


def fold_codes(code: np.ndarray, is_ratio: np.ndarray) -> np.ndarray:
    """Value codes of binned tables: grid bins for tokens, 3 decimals for ratios (monotone in code)."""
    ratio = (np.rint(code / RATIO_STEP) * RATIO_STEP).astype(np.int64)
    return np.where(is_ratio, ratio, bin_lower(code))


class ValueTable:
    """Counts per (table, value code) as sorted int64 keys ``table << 32 | code``, added chunk by chunk.

    Tables are small integers given by the caller (``table_is_ratio`` says which hold ratio
    codes, ``table_order`` ranks them for the budget's tie-break so the ranks, not the caller's
    numbering, decide). :meth:`checkpoint` must be called at fixed row counts of the stream.
    """

    def __init__(self):
        self.keys = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.float64)
        self.binned = np.zeros(0, dtype=bool)  # per table
        self.is_ratio = np.zeros(0, dtype=bool)  # per table
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0

    def grow(self, is_ratio: np.ndarray) -> None:
        """Register new tables (numbered after the existing ones)."""
        self.binned = np.r_[self.binned, np.zeros(len(is_ratio), dtype=bool)]
        self.is_ratio = np.r_[self.is_ratio, np.asarray(is_ratio, dtype=bool)]

    def add(self, table: np.ndarray, code: np.ndarray) -> None:
        """One observation per element (codes already integer; see :func:`value_codes`)."""
        code = np.where(self.binned[table], fold_codes(code, self.is_ratio[table]), code)
        keys, counts = _sum_runs(np.sort((table.astype(np.int64) << 32) | code), None)
        self._pending.append((keys, counts))
        self._pending_rows += len(keys)
        if self._pending_rows > max(len(self.keys) // 4, 1 << 20):
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([k for k, _ in self._pending])
        counts = np.concatenate([c for _, c in self._pending])
        self._pending, self._pending_rows = [], 0
        order = np.argsort(keys, kind="stable")
        keys, counts = _sum_runs(keys[order], counts[order])
        pos = np.searchsorted(self.keys, keys)
        hit = pos < len(self.keys)
        hit[hit] = self.keys[pos[hit]] == keys[hit]
        self.counts[pos[hit]] += counts[hit]
        if not hit.all():
            self.keys = np.insert(self.keys, pos[~hit], keys[~hit])
            self.counts = np.insert(self.counts, pos[~hit], counts[~hit])
        sizes = np.bincount(self.keys >> 32, minlength=len(self.binned))
        self._bin(np.flatnonzero((sizes > VALUE_CAP) & ~self.binned))

    def _bin(self, tables: np.ndarray) -> None:
        if len(tables) == 0:
            return
        self.binned[tables] = True
        table = self.keys >> 32
        fold = self.binned[table]
        code = self.keys & MAX_CODE
        folded = fold_codes(code[fold], self.is_ratio[table[fold]])
        self.keys[fold] = (table[fold] << 32) | folded
        # Folding is monotone inside a table: the keys stay sorted, equal ones are adjacent.
        self.keys, self.counts = _sum_runs(self.keys, self.counts)

    def checkpoint(self, table_order: np.ndarray) -> None:
        """Merge, then keep within the budget by binning the largest tables (ties: lowest ``table_order``)."""
        self._merge()
        while len(self.keys) > ENTRY_BUDGET:
            sizes = np.bincount(self.keys >> 32, minlength=len(self.binned)).astype(np.int64)
            candidates = np.flatnonzero(~self.binned & (sizes > 0))
            if len(candidates) == 0:
                return
            order = candidates[np.lexsort((table_order[candidates], -sizes[candidates]))]
            excess = len(self.keys) - ENTRY_BUDGET * 3 // 4
            take = int(np.searchsorted(np.cumsum(sizes[order]), excess)) + 1
            self._bin(order[:take])

    def result(self, table_order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(table, value code, count) sorted by (table, code), after a final checkpoint."""
        self.checkpoint(table_order)
        return self.keys >> 32, self.keys & MAX_CODE, self.counts


def value_codes(value: np.ndarray, is_ratio: bool, what: str) -> np.ndarray:
    """Integer codes of token counts (the counts) or ratios (ratio * 10**4, from 4-decimal ratios)."""
    if is_ratio:
        return np.rint(np.asarray(value, np.float64) * RATIO_SCALE).astype(np.int64)
    code = np.asarray(value, dtype=np.int64)
    if len(code) and (code.min() < 0 or code.max() > MAX_CODE):
        raise UserError(f"{what}: values must be token counts in [0, {MAX_CODE:,}]")
    return code


def code_values(code: np.ndarray, is_ratio: np.ndarray) -> np.ndarray:
    """The values behind codes (float64: token counts, or ratios with 4 decimals)."""
    return np.where(is_ratio, code / RATIO_SCALE, code.astype(np.float64))


def over_cap_and_fold(
    table: np.ndarray, code: np.ndarray, count: np.ndarray, is_ratio: np.ndarray, forced: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sum counts per (table, code), binning the ``forced`` tables and those past the cap.

    ``is_ratio`` and ``forced`` are per table (booleans indexed by ``table``). Returns
    (table, code, count, binned per row), sorted by (table, code).
    """
    fold = forced[table]
    code = np.array(code, dtype=np.int64)  # a copy: the caller's codes stay as they are
    code[fold] = fold_codes(code[fold], is_ratio[table[fold]])
    keys = (table.astype(np.int64) << 32) | code
    del code, fold
    order = np.argsort(keys, kind="stable")
    keys, count = _sum_runs(keys[order], np.asarray(count, np.float64)[order])
    sizes = np.bincount(keys >> 32, minlength=len(forced))
    binned = forced | (sizes > VALUE_CAP)
    if (binned & ~forced).any():
        t = keys >> 32
        over = binned[t] & ~forced[t]
        keys[over] = (t[over] << 32) | fold_codes(keys[over] & MAX_CODE, is_ratio[t[over]])
        keys, count = _sum_runs(keys, count)
    t = keys >> 32
    return t, keys & MAX_CODE, count, binned[t]


def _sum_runs(keys: np.ndarray, counts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys with equal neighbours summed into one (counts None: one each)."""
    if len(keys) == 0:
        return keys, np.zeros(0, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    if counts is None:
        return keys[starts], np.diff(np.r_[starts, len(keys)]).astype(np.float64)
    return keys[starts], np.add.reduceat(counts, starts)
