"""Arrival statistics: inter-arrival CV per window, index of dispersion, inter-arrival fits.

Definitions shared by characterization and the benchmark:

* The inter-arrival CV of a window is std/mean (population std) of the gaps
  whose two ends both fall in that window (windows as in
  :mod:`servegen_ml.stats.windows`); it is defined when the window has at least
  ``min_gaps`` such gaps and a positive mean gap.
* The index of dispersion at window ``w`` is var/mean (``ddof=1``) of the
  event counts of the full windows of ``w``; 1 for a Poisson process, above 1
  for bursty traffic. It needs at least ``min_windows`` full windows.
* Fits: Exponential, Gamma and Weibull by maximum likelihood (location 0) on
  the positive gaps; zero gaps (ties) are reported as a share, not fitted.
  Goodness of fit: log-likelihood, AIC and the KS statistic; the best family
  is the one with the lowest AIC.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from servegen_ml.stats.sampling import Reservoir
from servegen_ml.stats.windows import WindowSeries, full_window_count, window_counts, window_index

DISPERSION_WINDOWS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600, 86400)
# Coarser widths the 1 s count series moves to when a span is too long to hold at 1 s.
COUNT_LADDER_S = (10, 60, 600, 3600, 86400)


def inter_arrival_s(t_s: np.ndarray) -> np.ndarray:
    """Gaps between consecutive arrivals of a stream (sorted first)."""
    return np.diff(np.sort(np.asarray(t_s, dtype=np.float64)))


def cv_from_moments(n: np.ndarray, s1: np.ndarray, s2: np.ndarray, min_gaps: int = 2) -> np.ndarray:
    """CV = population std / mean of gaps from (count, sum, sum of squares); NaN when undefined."""
    n, s1, s2 = (np.asarray(a, dtype=np.float64) for a in (n, s1, s2))
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / n
        var = np.maximum(s2 / n - mean**2, 0.0)
        cv = np.sqrt(var) / mean
    return np.where((n >= min_gaps) & (mean > 0), cv, np.nan)


def gap_cv(gaps_s: np.ndarray) -> float:
    """CV of a set of gaps (population std / mean); NaN for fewer than 2 gaps or a zero mean."""
    g = np.asarray(gaps_s, dtype=np.float64)
    return float(cv_from_moments(len(g), g.sum(), (g**2).sum())) if len(g) else math.nan


def window_gap_runs(
    keys: np.ndarray, t_s: np.ndarray, prev_t_s: np.ndarray, t0_s: float, width_s: float
) -> pd.DataFrame:
    """Gap moments per (key, window) for rows sorted by (key, time).

    ``prev_t_s`` is each row's previous arrival of the same key (NaN for none).
    A gap counts in a window when both its ends are in it. One output row per
    run of equal (key, window), including runs without gaps (n_gaps 0).
    """
    if len(t_s) == 0:
        return pd.DataFrame({"key": [], "window": [], "n_gaps": [], "sum_s": [], "sumsq_s2": []})
    w = window_index(t_s, t0_s, width_s)
    prev = np.asarray(prev_t_s, dtype=np.float64)
    has_prev = ~np.isnan(prev)
    prev_w = window_index(np.where(has_prev, prev, t0_s), t0_s, width_s)
    inside = has_prev & (prev_w == w)
    gap = np.where(inside, t_s - np.where(has_prev, prev, 0.0), 0.0)
    starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]) | (w[1:] != w[:-1])])
    return pd.DataFrame(
        {
            "key": keys[starts],
            "window": w[starts],
            "n_gaps": np.add.reduceat(inside.astype(np.int64), starts),
            "sum_s": np.add.reduceat(gap, starts),
            "sumsq_s2": np.add.reduceat(gap**2, starts),
        }
    )


def cv_per_window(t_s: np.ndarray, width_s: float, min_gaps: int = 10) -> pd.DataFrame:
    """Aggregate inter-arrival CV of each window: columns window, start_s (from t0), n_gaps, cv."""
    t = np.sort(np.asarray(t_s, dtype=np.float64))
    prev = np.r_[np.nan, t[:-1]] if len(t) else t
    runs = window_gap_runs(np.zeros(len(t), dtype=np.int64), t, prev, float(t[0]) if len(t) else 0.0, width_s)
    return pd.DataFrame(
        {
            "window": runs["window"].to_numpy(),
            "start_s": runs["window"].to_numpy() * width_s,
            "n_gaps": runs["n_gaps"].to_numpy(),
            "cv": cv_from_moments(runs["n_gaps"], runs["sum_s"], runs["sumsq_s2"], min_gaps),
        }
    )


def dispersion_from_counts(counts: np.ndarray, min_windows: int = 8) -> float:
    """var/mean (ddof=1) of per-window counts; NaN with too few windows or no events."""
    c = np.asarray(counts, dtype=np.float64)
    if len(c) < max(min_windows, 2) or c.mean() <= 0:
        return math.nan
    return float(c.var(ddof=1) / c.mean())


def dispersion_index(t_s: np.ndarray, windows_s=(1, 10, 60, 600), min_windows: int = 8) -> dict[float, float]:
    """Index of dispersion of event counts at each window size (NaN where undefined)."""
    return {float(w): dispersion_from_counts(window_counts(t_s, w), min_windows) for w in windows_s}


def fit_inter_arrivals(gaps_s: np.ndarray) -> dict:
    """MLE fits of Exponential, Gamma and Weibull to the positive gaps, with log-likelihood, AIC and KS."""
    g = np.asarray(gaps_s, dtype=np.float64)
    pos = g[g > 0]
    out: dict = {
        "gaps": int(len(g)),
        "zero_share": float(np.mean(g == 0)) if len(g) else math.nan,
        "fitted": int(len(pos)),
        "families": {},
        "best": None,
    }
    if len(pos) < 10:
        out["note"] = "fewer than 10 positive gaps"
        return out
    if np.ptp(pos) <= 1e-12 * pos.max():
        out["note"] = "all positive gaps are equal (deterministic arrivals): nothing to fit"
        return out
    distinct = len(np.unique(np.round(pos / pos.max(), 9)))
    if distinct < 20:
        out["note"] = (
            f"positive gaps take only {distinct} distinct values: timestamps lie on a coarse grid "
            "(batched logging), so the fits describe the grid rather than the traffic"
        )
    # fitting in units of the mean gap keeps the optimizers well conditioned
    unit = float(pos.mean())
    x = pos / unit
    for name, k in (("exponential", 1), ("gamma", 2), ("weibull", 2)):
        try:
            dist, params = _fit_family(name, x, unit)
        except (ValueError, RuntimeError) as e:
            out["families"][name] = {"error": str(e)}
            continue
        loglik = float(dist.logpdf(pos).sum())
        ks = sps.kstest(pos, dist.cdf)
        out["families"][name] = {
            "params": {p: float(v) for p, v in params.items()},
            "loglik": loglik,
            "aic": 2 * k - 2 * loglik,
            "ks_statistic": float(ks.statistic),
            "ks_pvalue": float(ks.pvalue),
        }
    fitted = {f: r for f, r in out["families"].items() if "aic" in r and math.isfinite(r["aic"])}
    out["best"] = min(fitted, key=lambda f: fitted[f]["aic"]) if fitted else None
    return out


def _fit_family(name: str, x: np.ndarray, unit: float):
    """(frozen scipy distribution in seconds, parameters) fitted by MLE to gaps ``x`` in units of ``unit``."""
    if name == "exponential":
        return sps.expon(scale=unit), {"scale_s": unit}
    family = sps.gamma if name == "gamma" else sps.weibull_min
    with np.errstate(all="ignore"):
        shape, _, scale = family.fit(x, floc=0)
    if not (math.isfinite(shape) and math.isfinite(scale) and shape > 0 and scale > 0):
        raise ValueError(f"{name} fit did not converge (shape {shape}, scale {scale})")
    return family(shape, scale=scale * unit), {"shape": shape, "scale_s": scale * unit}


class ArrivalAccumulator:
    """Streaming aggregate arrival statistics over sorted chunks of timestamps (bounded memory).

    Exact: request count, span, per-window counts (hence rates and dispersion at
    every window that is a multiple of the count resolution — 1 s until the span
    exceeds ``max_bins`` seconds), per-window CV, overall gap moments and zero-gap
    share. Approximate: the inter-arrival fits use a uniform sample of
    ``fit_sample`` gaps.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        cv_window_s: float = 600.0,
        min_gaps: int = 10,
        fit_sample: int = 200_000,
        max_bins: int = 1 << 23,
    ):
        self.cv_window_s = float(cv_window_s)
        self.min_gaps = int(min_gaps)
        self.max_bins = int(max_bins)
        self.gap_sample = Reservoir(fit_sample, rng)
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.requests = 0
        self.gap_moments = np.zeros(3)  # count, sum, sum of squares (all gaps)
        self.zero_gaps = 0

    def _start(self, t0: float) -> None:
        self.t_first = t0
        self.counts = WindowSeries(1.0, ("count",), t0, COUNT_LADDER_S, self.max_bins)
        self.cv_moments = WindowSeries(self.cv_window_s, ("n", "s1", "s2"), t0, max_bins=self.max_bins)
        # absolute hours (t mod 86400 is the time of day) for the daily and weekly views
        self.hourly = WindowSeries(
            3600.0, ("count",), math.floor(t0 / 3600) * 3600, (86400.0,), self.max_bins
        )

    def add(self, t_s: np.ndarray) -> None:
        """Add the next chunk of timestamps (sorted, none before the previous chunk's last)."""
        t = np.asarray(t_s, dtype=np.float64)
        if len(t) == 0:
            return
        if self.t_first is None:
            self._start(float(t[0]))
        prev = np.r_[np.nan if self.t_last is None else self.t_last, t[:-1]]
        runs = window_gap_runs(np.zeros(len(t), dtype=np.int64), t, prev, self.t_first, self.cv_window_s)
        self.cv_moments.add_at(
            runs["window"].to_numpy(),
            n=runs["n_gaps"].to_numpy(),
            s1=runs["sum_s"].to_numpy(),
            s2=runs["sumsq_s2"].to_numpy(),
        )
        gaps = (t - prev)[~np.isnan(prev)]
        self.gap_moments += [len(gaps), gaps.sum(), (gaps**2).sum()]
        self.zero_gaps += int((gaps == 0).sum())
        self.gap_sample.add(gap_s=gaps)
        self.counts.add(t)
        self.hourly.add(t)
        self.requests += len(t)
        self.t_last = float(t[-1])

    def result(self) -> dict:
        """JSON-ready statistics plus ``"series"`` arrays for figures."""
        if self.t_first is None:
            return {"requests": 0}
        span = self.t_last - self.t_first
        fits = fit_inter_arrivals(self.gap_sample.sample().get("gap_s", np.zeros(0)))
        fits["zero_share"] = self.zero_gaps / max(self.gap_moments[0], 1)
        fits["sampled"] = self.gap_sample.seen > self.gap_sample.size
        n, s1, s2 = self.gap_moments
        cv_series = self._cv_series()
        rate_width = _plot_width(span, self.counts.width_s)
        rate = self.counts.full(self.t_last, rate_width)["count"] / rate_width
        dispersion = {
            w: dispersion_from_counts(self.counts.full(self.t_last, w)["count"])
            for w in DISPERSION_WINDOWS_S
            if w % self.counts.width_s == 0 and full_window_count(span, w) >= 8
        }
        return {
            "requests": self.requests,
            "t_first_s": self.t_first,
            "t_last_s": self.t_last,
            "span_s": span,
            "mean_rate_rps": self.requests / span if span > 0 else math.nan,
            "count_resolution_s": self.counts.width_s,
            "inter_arrival": {
                "mean_s": s1 / n if n else math.nan,
                "cv": float(cv_from_moments(n, s1, s2)),
                "fits": fits,
            },
            "cv_window_s": self.cv_window_s,
            "window_cv": _quantiles_of(cv_series["cv"].to_numpy()),
            "dispersion": {str(w): v for w, v in dispersion.items()},
            "series": {
                "rate_width_s": rate_width,
                "rate_rps": rate,
                "cv": cv_series,
                "hourly": self._hourly_rates(),
                "gap_sample_s": self.gap_sample.sample().get("gap_s", np.zeros(0)),
            },
        }

    def _cv_series(self) -> pd.DataFrame:
        m = self.cv_moments.full(self.t_last + self.cv_window_s)  # include the last (partial) window
        cv = cv_from_moments(m["n"], m["s1"], m["s2"], self.min_gaps)
        return pd.DataFrame({"start_s": np.arange(len(cv)) * self.cv_window_s, "n_gaps": m["n"], "cv": cv})

    def _hourly_rates(self) -> pd.DataFrame:
        """Requests/s per absolute hour, using only each hour's observed part (NaN under 10 minutes)."""
        h = self.hourly
        counts = h.sums["count"]
        start = h.anchor_s + np.arange(len(counts)) * h.width_s
        covered = np.clip(
            np.minimum(start + h.width_s, self.t_last) - np.maximum(start, self.t_first), 0, None
        )
        keep = start <= self.t_last
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(covered >= h.width_s / 6, counts / covered, np.nan)
        return pd.DataFrame({"start_s": start[keep], "width_s": h.width_s, "rate_rps": rate[keep]})


def _plot_width(span_s: float, resolution_s: float) -> float:
    """Smallest count-ladder width (a multiple of the resolution) giving at most ~2000 points."""
    for w in (1, 10, 60, 600, 3600, 86400):
        if w >= resolution_s and w % resolution_s == 0 and span_s / w <= 2000:
            return float(w)
    return 86400.0


def _quantiles_of(values: np.ndarray) -> dict:
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return {"windows": 0}
    q = np.quantile(v, [0.1, 0.5, 0.9])
    return {
        "windows": int(len(v)),
        "p10": float(q[0]),
        "p50": float(q[1]),
        "p90": float(q[2]),
        "mean": float(v.mean()),
    }
