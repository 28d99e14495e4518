"""Mergeable fixed-bin histograms: bounded-memory distributions for streaming statistics.

* :class:`IntHistogram` — non-negative integers (token counts, items per
  request). Values below ``exact_max`` get one bin each (exact); larger values
  fall in log-spaced bins, ``bins_per_octave`` per doubling. Counts, mean, min
  and max are exact; a quantile is exact when it falls below ``exact_max`` and
  otherwise within a relative error of ``2**(1/bins_per_octave) - 1`` (1.1 % at
  the default 64).
* :class:`UnitHistogram` — values in [0, 1] (ratios) with exact point masses
  at 0 and 1, equal-width bins between, and exact raw moments (for skewness,
  kurtosis and the bimodality coefficient).
* :class:`LogValueHistogram` — positive reals on a log10 grid (CVs, gaps), with
  optional weights.
"""

from __future__ import annotations

import math

import numpy as np

# 2**62 tokens is beyond any real count; it sizes the log bins.
_MAX_OCTAVES = 62


class IntHistogram:
    def __init__(self, exact_max: int = 2048, bins_per_octave: int = 64):
        self.exact_max = int(exact_max)
        self.bins_per_octave = int(bins_per_octave)
        octaves = _MAX_OCTAVES - int(math.log2(max(self.exact_max, 1)))
        self.counts = np.zeros(self.exact_max + octaves * self.bins_per_octave, dtype=np.int64)
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def bin_of(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.int64)
        above = np.maximum(v, self.exact_max).astype(np.float64) / max(self.exact_max, 1)
        log_bin = self.exact_max + np.floor(np.log2(above) * self.bins_per_octave).astype(np.int64)
        return np.where(v < self.exact_max, v, log_bin)

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.int64)
        if len(v) == 0:
            return
        if v.min() < 0:
            raise ValueError("IntHistogram takes non-negative integers")
        self.counts += np.bincount(self.bin_of(v), minlength=len(self.counts))
        self.total += float(v.sum(dtype=np.float64))
        self.min = min(self.min, int(v.min()))
        self.max = max(self.max, int(v.max()))

    def merge(self, other: IntHistogram) -> None:
        self.counts += other.counts
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    def lower_edges(self) -> np.ndarray:
        """Smallest value of each bin (float; log bins hold integers in [lower, upper))."""
        j = np.arange(len(self.counts) - self.exact_max)
        log_edges = max(self.exact_max, 1) * 2.0 ** (j / self.bins_per_octave)
        return np.concatenate([np.arange(self.exact_max, dtype=np.float64), log_edges])

    def upper_edges(self) -> np.ndarray:
        lower = self.lower_edges()
        return np.concatenate([lower[1:], [lower[-1] * 2.0 ** (1 / self.bins_per_octave)]])

    def quantile(self, qs) -> np.ndarray:
        """Inverted-CDF quantiles (exact below ``exact_max``, interpolated inside a log bin above)."""
        qs = np.atleast_1d(np.asarray(qs, dtype=np.float64))
        n = self.n
        if n == 0:
            return np.full(len(qs), np.nan)
        cum = np.cumsum(self.counts)
        rank = np.clip(np.ceil(qs * n), 1, n)
        b = np.searchsorted(cum, rank, side="left")
        lower, upper = self.lower_edges()[b], self.upper_edges()[b]
        before = np.where(b > 0, cum[np.maximum(b - 1, 0)], 0)
        frac = (rank - before) / np.maximum(self.counts[b], 1)
        # integers in a log bin are ceil(lower) .. ceil(upper) - 1; interpolate the rank among them
        in_log_bin = np.clip(np.round(lower + frac * (upper - lower)), np.ceil(lower), np.ceil(upper) - 1)
        return np.clip(np.where(b < self.exact_max, lower, in_log_bin), self.min, self.max)

    def cdf(self) -> tuple[np.ndarray, np.ndarray]:
        """(value, fraction <= value) at the top of each non-empty bin, for plotting."""
        keep = self.counts > 0
        tops = np.where(np.arange(len(self.counts)) < self.exact_max, self.lower_edges(), self.upper_edges())
        frac = np.cumsum(self.counts) / max(self.n, 1)
        return np.minimum(tops[keep], self.max), frac[keep]

    def summary(self, qs=(0.5, 0.9, 0.99, 0.999)) -> dict:
        if self.n == 0:
            return {"count": 0}
        out = {"count": self.n, "mean": self.mean, "min": int(self.min), "max": int(self.max)}
        out.update({f"p{_q_label(q)}": float(v) for q, v in zip(qs, self.quantile(qs))})
        return out


def _q_label(q: float) -> str:
    return f"{q * 100:g}".replace(".", "")


class UnitHistogram:
    def __init__(self, bins: int = 500):
        self.bins = int(bins)
        # [exactly 0] + bins equal-width bins over (0, 1) + [exactly 1]
        self.counts = np.zeros(self.bins + 2, dtype=np.int64)
        self.moments = np.zeros(5)  # sum of x**0 .. x**4

    def add(self, values: np.ndarray) -> None:
        x = np.asarray(values, dtype=np.float64)
        if len(x) == 0:
            return
        if x.min() < 0 or x.max() > 1:
            raise ValueError("UnitHistogram takes values in [0, 1]")
        idx = np.where(
            x <= 0, 0, np.where(x >= 1, self.bins + 1, 1 + np.minimum(np.floor(x * self.bins), self.bins - 1))
        )
        self.counts += np.bincount(idx.astype(np.int64), minlength=self.bins + 2)
        self.moments += [len(x), x.sum(), (x**2).sum(), (x**3).sum(), (x**4).sum()]

    def merge(self, other: UnitHistogram) -> None:
        self.counts += other.counts
        self.moments += other.moments

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def density(self, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """(bin edges, share per bin) on ``bins`` equal bins, point masses folded into the end bins."""
        factor = self.bins // bins
        inner = self.counts[1:-1].reshape(bins, factor).sum(axis=1).astype(np.float64)
        inner[0] += self.counts[0]
        inner[-1] += self.counts[-1]
        return np.linspace(0, 1, bins + 1), inner / max(self.n, 1)

    def summary(self) -> dict:
        n = self.n
        if n == 0:
            return {"count": 0}
        m1, m2, m3, m4 = (self.moments[1:] / n).tolist()
        var = max(m2 - m1**2, 0.0)
        cum = np.cumsum(self.counts) / n
        edges = np.concatenate([[0.0], (np.arange(self.bins) + 1) / self.bins, [1.0]])
        q = {f"p{_q_label(p)}": float(edges[np.searchsorted(cum, p)]) for p in (0.1, 0.5, 0.9)}
        return {
            "count": n,
            "mean": m1,
            "std": math.sqrt(var),
            "share_zero": float(self.counts[0] / n),
            "share_one": float(self.counts[-1] / n),
            "share_below_0.1": float(self.counts[: 1 + self.bins // 10].sum() / n),
            "share_above_0.9": float(self.counts[1 + 9 * self.bins // 10 :].sum() / n),
            "bimodality_coefficient": bimodality_from_moments(n, m1, m2, m3, m4),
            **q,
        }


def bimodality_from_moments(n: int, m1: float, m2: float, m3: float, m4: float) -> float:
    """Sarle's bimodality coefficient from raw moments; above 5/9 (the uniform's value) suggests bimodality."""
    var = m2 - m1**2
    if n < 4 or var <= 0:
        return math.nan
    c3 = m3 - 3 * m1 * m2 + 2 * m1**3
    c4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    g1 = c3 / var**1.5
    g2 = c4 / var**2 - 3.0
    # sample (bias-corrected) skewness and excess kurtosis
    skew = g1 * math.sqrt(n * (n - 1)) / (n - 2)
    kurt = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * g2 + 6)
    return (skew**2 + 1) / (kurt + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))


class LogValueHistogram:
    """Weighted histogram of positive values on a log10 grid over [10**lo, 10**hi], clipped at the ends."""

    def __init__(self, lo: float = -3.0, hi: float = 3.0, bins_per_decade: int = 100):
        self.lo, self.hi = float(lo), float(hi)
        self.edges = np.linspace(lo, hi, int(round((hi - lo) * bins_per_decade)) + 1)
        self.weights = np.zeros(len(self.edges) - 1)

    def add(self, values: np.ndarray, weights: np.ndarray | None = None) -> None:
        x = np.asarray(values, dtype=np.float64)
        if len(x) == 0:
            return
        w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
        logx = np.clip(np.log10(np.maximum(x, 10**self.lo)), self.lo, self.hi - 1e-12)
        idx = np.searchsorted(self.edges, logx, side="right") - 1
        self.weights += np.bincount(idx, weights=w, minlength=len(self.weights))

    def merge(self, other: LogValueHistogram) -> None:
        self.weights += other.weights

    @property
    def total(self) -> float:
        return float(self.weights.sum())

    def cdf(self) -> tuple[np.ndarray, np.ndarray]:
        """(value at each bin top, weighted fraction <= value)."""
        return 10 ** self.edges[1:], np.cumsum(self.weights) / max(self.total, 1e-300)

    def quantile(self, qs) -> np.ndarray:
        qs = np.atleast_1d(np.asarray(qs, dtype=np.float64))
        if self.total == 0:
            return np.full(len(qs), np.nan)
        cum = np.cumsum(self.weights) / self.total
        b = np.minimum(np.searchsorted(cum, qs, side="left"), len(self.weights) - 1)
        # geometric bin centre: half a bin's relative error at most
        return 10 ** ((self.edges[b] + self.edges[b + 1]) / 2)
