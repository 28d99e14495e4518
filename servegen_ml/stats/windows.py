"""Time windows shared by every windowed statistic, in memory and streaming.

Windows are anchored at the trace's first timestamp ``t0``: window ``k`` covers
``[t0 + k*w, t0 + (k+1)*w)``. A window is *full* when it ends by the trace's
last timestamp (with a small tolerance, because a trace's last event rarely
falls exactly on its end); only full windows enter statistics that compare
windows (rates, dispersion), so a half-observed last window never looks quiet.
"""

from __future__ import annotations

import math

import numpy as np


def full_window_count(span_s: float, width_s: float) -> int:
    """How many whole windows of ``width_s`` fit in a trace spanning ``span_s`` (last - first timestamp)."""
    if span_s < 0 or width_s <= 0:
        return 0
    tolerance_s = min(1.0, 0.01 * width_s)
    return int(math.floor((span_s + tolerance_s) / width_s))


def window_index(t_s: np.ndarray, t0_s: float, width_s: float) -> np.ndarray:
    """Index of the window holding each timestamp (int64)."""
    return np.floor((np.asarray(t_s, dtype=np.float64) - t0_s) / width_s).astype(np.int64)


def window_counts(t_s: np.ndarray, width_s: float) -> np.ndarray:
    """Events per full window of ``width_s``, anchored at the first timestamp (int64)."""
    t = np.asarray(t_s, dtype=np.float64)
    if len(t) == 0:
        return np.zeros(0, dtype=np.int64)
    t0, span = float(t.min()), float(t.max() - t.min())
    n = full_window_count(span, width_s)
    idx = window_index(t, t0, width_s)
    return np.bincount(idx[idx < n], minlength=n)[:n].astype(np.int64)


def window_sums(t_s: np.ndarray, values: np.ndarray, width_s: float) -> np.ndarray:
    """Sum of ``values`` per full window of ``width_s``, anchored at the first timestamp (float64)."""
    t = np.asarray(t_s, dtype=np.float64)
    if len(t) == 0:
        return np.zeros(0)
    t0, span = float(t.min()), float(t.max() - t.min())
    n = full_window_count(span, width_s)
    idx = window_index(t, t0, width_s)
    keep = idx < n
    return np.bincount(idx[keep], weights=np.asarray(values, dtype=np.float64)[keep], minlength=n)[:n]


class WindowSeries:
    """Streaming per-window sums of named fields on a growing time axis.

    ``add`` takes sorted or unsorted timestamps at or after ``anchor_s``. When
    the axis would exceed ``max_bins`` the width moves to the next entry of
    ``ladder_s`` (each an integer multiple of the previous), summing bins, so
    memory stays bounded for any span; sums stay exact at the coarser width.
    """

    def __init__(
        self,
        width_s: float,
        fields: tuple[str, ...],
        anchor_s: float,
        ladder_s: tuple[float, ...] = (),
        max_bins: int = 1 << 22,
    ):
        self.width_s = float(width_s)
        self.fields = fields
        self.anchor_s = float(anchor_s)
        self.ladder_s = tuple(w for w in ladder_s if w > width_s)
        self.max_bins = int(max_bins)
        self.sums = {f: np.zeros(1024) for f in fields}

    @property
    def capacity(self) -> int:
        return len(self.sums[self.fields[0]])

    def add(self, t_s: np.ndarray, **values: np.ndarray) -> None:
        """Add events at times ``t_s`` (at or after the anchor); a field without values counts events."""
        if len(t_s) == 0:
            return
        t = np.asarray(t_s, dtype=np.float64)
        if t.min() < self.anchor_s:
            raise ValueError(f"timestamp {float(t.min())} is before the series anchor {self.anchor_s}")
        self.add_at(window_index(t, self.anchor_s, self.width_s), **values)

    def add_at(self, idx: np.ndarray, **values: np.ndarray) -> None:
        """Add values at window indices of the current width (non-negative int64)."""
        if len(idx) == 0:
            return
        idx = np.asarray(idx, dtype=np.int64)
        while int(idx.max()) >= self.max_bins:
            idx = idx // self._coarsen()
        top = int(idx.max())
        if top >= self.capacity:
            self._grow(top + 1)
        lo = int(idx.min())
        local = idx - lo
        for name in self.fields:
            weights = values.get(name)
            binned = np.bincount(local, weights=None if weights is None else np.asarray(weights, np.float64))
            self.sums[name][lo : lo + len(binned)] += binned

    def _grow(self, need: int) -> None:
        old = self.capacity
        size = min(max(need, 2 * old), self.max_bins)
        for name in self.fields:
            grown = np.zeros(size)
            grown[:old] = self.sums[name]
            self.sums[name] = grown

    def _coarsen(self) -> int:
        """Move to the next ladder width; returns the integer factor."""
        if not self.ladder_s:
            raise ValueError(
                f"time span exceeds {self.max_bins} windows of {self.width_s} s and no coarser width is allowed"
            )
        new_width = self.ladder_s[0]
        factor = int(round(new_width / self.width_s))
        self.ladder_s = self.ladder_s[1:]
        for name in self.fields:
            arr = self.sums[name]
            pad = (-len(arr)) % factor
            self.sums[name] = np.concatenate([arr, np.zeros(pad)]).reshape(-1, factor).sum(axis=1)
        self.width_s = new_width
        return factor

    def full(self, last_s: float, width_s: float | None = None) -> dict[str, np.ndarray]:
        """Per-field sums over the full windows of ``width_s`` (a multiple of the current width) up to ``last_s``."""
        width_s = self.width_s if width_s is None else float(width_s)
        factor = int(round(width_s / self.width_s))
        if factor < 1 or abs(factor * self.width_s - width_s) > 1e-9 * width_s:
            raise ValueError(f"window {width_s} s is not a multiple of the series width {self.width_s} s")
        n = full_window_count(last_s - self.anchor_s, width_s)
        out = {}
        for name in self.fields:
            arr = self.sums[name][: n * factor]
            arr = np.concatenate([arr, np.zeros(n * factor - len(arr))])
            out[name] = arr.reshape(n, factor).sum(axis=1)
        return out
