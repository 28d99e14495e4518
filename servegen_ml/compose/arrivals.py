"""Renewal arrivals for many segments at once (no Python loop per request).

Each segment ``[start, end)`` is an independent stationary renewal stream: the
first arrival is the forward recurrence time from ``start`` (so restarting at
a window edge does not bias the rate), later gaps follow the family. Counts
per segment therefore keep their natural spread; nothing is rescaled to hit
``rate * length``. Gaps are drawn in blocks sized from the expected count; the
few segments not yet past their end draw another block (a loop over rounds,
not over requests).
"""

from __future__ import annotations

import numpy as np

from servegen_ml.compose import interarrival as ia


def renewal_arrivals(
    start_s: np.ndarray,
    end_s: np.ndarray,
    family: np.ndarray,
    shape: np.ndarray,
    rate: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(segment index, arrival time) of all arrivals, grouped by segment in time order."""
    start_s = np.asarray(start_s, dtype=np.float64)
    end_s = np.asarray(end_s, dtype=np.float64)
    family = np.asarray(family, dtype=np.int8)
    shape = ia.clip_shape(family, shape)
    rate = np.asarray(rate, dtype=np.float64)
    active = np.flatnonzero((rate > 0) & (end_s > start_s))
    scale = np.zeros(len(rate))
    scale[active] = ia.scale_for_rate(family[active], shape[active], rate[active])
    owners, times = [], []
    pending, base, first = active, start_s[active], True
    while len(pending):
        length = end_s[pending] - base
        expected = rate[pending] * length
        n = np.ceil(1.2 * expected + 4.0 * np.sqrt(expected) + 4.0).astype(np.int64)
        seg = np.repeat(np.arange(len(pending)), n)
        idx = pending[seg]
        gaps = ia.sample_gaps(family[idx], shape[idx], scale[idx], rng)
        if first:
            heads = np.cumsum(n) - n
            p = pending
            gaps[heads] = ia.sample_forward_recurrence(family[p], shape[p], scale[p], rng)
        # A gap longer than the segment ends it anyway; clipping keeps the cumulative sums exact.
        gaps = np.minimum(gaps, length[seg])
        t = _segment_cumsum(gaps, n) + base[seg]
        inside = t < end_s[idx]
        owners.append(idx[inside])
        times.append(t[inside])
        last = t[np.cumsum(n) - 1]
        unfinished = last < end_s[pending]
        pending, base, first = pending[unfinished], last[unfinished], False
    owner = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
    time = np.concatenate(times) if times else np.zeros(0)
    if len(owners) > 1:
        order = np.lexsort((time, owner))
        owner, time = owner[order], time[order]
    return owner, time


def _segment_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each block of ``counts`` consecutive values."""
    total = np.cumsum(values)
    ends = np.cumsum(counts)
    before = np.concatenate([[0.0], total[ends[:-1] - 1]]) if len(counts) else np.zeros(0)
    return total - np.repeat(before, counts)
