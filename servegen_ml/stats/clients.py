"""Client statistics: per-client rate and burstiness, traffic-weighted CDFs, top-client shares.

Definitions shared by characterization and the benchmark:

* A client's rate is its requests divided by the whole trace's span (last -
  first timestamp), so rates of one trace add up to the aggregate rate.
* A client's CV is the traffic-weighted mean of its per-window inter-arrival
  CVs (windows of ``cv_window_s``, 600 s by default as in ServeGen, each with at
  least ``min_gaps`` gaps inside it; weight = gaps in the window). It measures
  burstiness within windows, not the swing of the rate over the day. NaN when
  no window qualifies. ``cv_overall`` is the CV of all the client's gaps.
* Traffic-weighted distributions weight each client by its requests.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from servegen_ml.stats.arrivals import cv_from_moments, window_gap_runs
from servegen_ml.stats.histogram import IntHistogram, LogValueHistogram
from servegen_ml.stats.windows import window_index

TOP_KS = (1, 5, 10)


def weighted_cdf(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted values, cumulative weight fraction) ignoring NaN values."""
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    keep = ~np.isnan(v)
    v, w = v[keep], w[keep]
    order = np.argsort(v, kind="stable")
    return v[order], np.cumsum(w[order]) / max(w.sum(), 1e-300)


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs=(0.1, 0.5, 0.9)) -> dict[str, float]:
    x, cum = weighted_cdf(values, weights)
    if len(x) == 0:
        return {}
    idx = np.minimum(np.searchsorted(cum, qs, side="left"), len(x) - 1)
    return {f"p{int(round(q * 100))}": float(x[i]) for q, i in zip(qs, idx)}


def top_share(requests: np.ndarray, ks=TOP_KS) -> dict[str, float]:
    """Share of all requests sent by the k largest clients, for each k."""
    r = np.sort(np.asarray(requests, dtype=np.float64))[::-1]
    total = max(r.sum(), 1e-300)
    return {f"top{k}": float(r[:k].sum() / total) for k in ks}


def _client_codes(client_id) -> tuple[np.ndarray, pd.Index]:
    codes, uniques = pd.factorize(pd.Series(client_id), sort=False)
    return codes.astype(np.int64), pd.Index(uniques)


def _sorted_with_prev(codes: np.ndarray, t_s: np.ndarray, last_t: np.ndarray | None = None):
    """Rows ordered by (client, time) with each row's previous arrival of the same client."""
    order = np.lexsort((t_s, codes))
    g, t = codes[order], t_s[order]
    first = np.r_[True, g[1:] != g[:-1]] if len(g) else np.zeros(0, bool)
    prev = np.r_[np.nan, t[:-1]] if len(t) else t.copy()
    prev[first] = np.nan if last_t is None else last_t[g[first]]
    return order, g, t, prev


def client_summary(trace: pd.DataFrame, cv_window_s: float = 600.0, min_gaps: int = 10) -> pd.DataFrame:
    """One row per client, largest first: requests, share, rate_rps, cv, cv_overall, mean_input, mean_output."""
    codes, ids = _client_codes(trace["client_id"])
    t_all = trace["timestamp"].to_numpy(dtype=np.float64)
    if len(t_all) == 0:
        return pd.DataFrame(
            columns=[
                "client_id",
                "requests",
                "share",
                "rate_rps",
                "cv",
                "cv_overall",
                "mean_input",
                "mean_output",
            ]
        )
    order, g, t, prev = _sorted_with_prev(codes, t_all)
    k = len(ids)
    runs = window_gap_runs(g, t, prev, float(t_all.min()), cv_window_s)
    runs["cv"] = cv_from_moments(runs["n_gaps"], runs["sum_s"], runs["sumsq_s2"], min_gaps)
    ok = runs["cv"].notna()
    cvw_sum = np.bincount(runs["key"][ok], weights=(runs["n_gaps"] * runs["cv"])[ok], minlength=k)
    cvw_n = np.bincount(runs["key"][ok], weights=runs["n_gaps"][ok], minlength=k)
    has = ~np.isnan(prev)
    gap = (t - prev)[has]
    moments = [np.bincount(g[has], weights=w, minlength=k) for w in (np.ones(len(gap)), gap, gap**2)]
    requests = np.bincount(codes, minlength=k)
    span = float(t_all.max() - t_all.min())
    out = pd.DataFrame(
        {
            "client_id": ids.astype(str),
            "requests": requests,
            "share": requests / len(t_all),
            "rate_rps": requests / span if span > 0 else np.full(k, np.nan),
            "cv": np.where(cvw_n > 0, cvw_sum / np.maximum(cvw_n, 1), np.nan),
            "cv_overall": cv_from_moments(*moments),
            "mean_input": np.bincount(codes, weights=trace["input_tokens"].to_numpy(np.float64), minlength=k)
            / requests,
            "mean_output": np.bincount(
                codes, weights=trace["output_tokens"].to_numpy(np.float64), minlength=k
            )
            / requests,
        }
    )
    return out.sort_values(["requests", "client_id"], ascending=[False, True], ignore_index=True)


def client_window_cvs(trace: pd.DataFrame, width_s: float, min_gaps: int = 10) -> pd.DataFrame:
    """Inter-arrival CV of every (client, window) with enough gaps: columns client, window, n_gaps, cv."""
    codes, ids = _client_codes(trace["client_id"])
    t_all = trace["timestamp"].to_numpy(dtype=np.float64)
    if len(t_all) == 0:
        return pd.DataFrame({"client": [], "window": [], "n_gaps": [], "cv": []})
    _, g, t, prev = _sorted_with_prev(codes, t_all)
    runs = window_gap_runs(g, t, prev, float(t_all.min()), width_s)
    cv = cv_from_moments(runs["n_gaps"], runs["sum_s"], runs["sumsq_s2"], min_gaps)
    keep = ~np.isnan(cv)
    return pd.DataFrame(
        {
            "client": np.asarray(ids.astype(str))[runs["key"][keep]],
            "window": runs["window"][keep].to_numpy(),
            "n_gaps": runs["n_gaps"][keep].to_numpy(),
            "cv": cv[keep],
        }
    )


# Per-client length histograms are coarse (exact to 16 tokens, 8 bins per doubling, up to 2**32).
_CLIENT_HIST = IntHistogram(exact_max=16, bins_per_octave=8)
_CLIENT_BINS = 16 + 28 * 8
# Widths the per-client count series moves through to stay under _SERIES_MAX windows.
_SERIES_LADDER_S = (600, 1800, 3600, 10800, 21600, 86400, 604800)
_SERIES_MAX = 1024


class ClientAccumulator:
    """Streaming per-client statistics over sorted chunks (memory grows with clients, not requests).

    Exact: requests, rates, shares, per-window CVs (hence client CVs), overall
    gap moments, mean lengths, per-client counts per window (600 s, coarsened
    to keep at most 1024 windows). Approximate: per-client length histograms
    (8 bins per doubling above 16 tokens).
    """

    def __init__(self, t0_s: float, cv_window_s: float = 600.0, min_gaps: int = 10):
        self.t0 = float(t0_s)
        self.cv_window_s = float(cv_window_s)
        self.min_gaps = int(min_gaps)
        self.index = pd.Index([], dtype=object)
        self.t_last = -math.inf
        self.window_cv_hist = LogValueHistogram()
        self.series_width_s = float(_SERIES_LADDER_S[0])
        self._ladder = _SERIES_LADDER_S[1:]
        self._alloc(0, 16)

    # per-client state: name -> initial value (int fill -> int64 array, float fill -> float64 array)
    _FIELDS = {
        "requests": 0,
        "sum_input": 0.0,
        "sum_output": 0.0,
        "last_t": np.nan,
        "gap_n": 0.0,
        "gap_s1": 0.0,
        "gap_s2": 0.0,
        "open_w": -1,
        "open_n": 0.0,
        "open_s1": 0.0,
        "open_s2": 0.0,
        "cvw_sum": 0.0,
        "cvw_n": 0.0,
    }

    def _alloc(self, old: int, new: int) -> None:
        """Grow every per-client array from ``old`` to ``new`` rows, keeping the first ``old``."""
        for name, fill in self._FIELDS.items():
            arr = np.full(new, fill, dtype=np.int64 if isinstance(fill, int) else np.float64)
            if old:
                arr[:old] = getattr(self, name)[:old]
            setattr(self, name, arr)
        series_cols = self.series.shape[1] if old else 64
        for name, cols in (
            ("hist_input", _CLIENT_BINS),
            ("hist_output", _CLIENT_BINS),
            ("series", series_cols),
        ):
            arr = np.zeros((new, cols), dtype=np.int64)
            if old:
                arr[:old] = getattr(self, name)[:old]
            setattr(self, name, arr)

    def _codes(self, client_id) -> np.ndarray:
        local, uniques = _client_codes(client_id)
        new = uniques[~uniques.isin(self.index)]
        if len(new):
            self.index = self.index.append(pd.Index(new, dtype=object))
            if len(self.index) > len(self.requests):
                self._alloc(len(self.requests), max(len(self.index), 2 * len(self.requests)))
        return self.index.get_indexer(uniques)[local].astype(np.int64)

    def add(self, t_s: np.ndarray, client_id, input_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
        t = np.asarray(t_s, dtype=np.float64)
        if len(t) == 0:
            return
        codes = self._codes(client_id)
        k = len(self.requests)
        self.requests += np.bincount(codes, minlength=k)
        self.sum_input += np.bincount(codes, weights=np.asarray(input_tokens, np.float64), minlength=k)
        self.sum_output += np.bincount(codes, weights=np.asarray(output_tokens, np.float64), minlength=k)
        np.add.at(
            self.hist_input, (codes, np.minimum(_CLIENT_HIST.bin_of(input_tokens), _CLIENT_BINS - 1)), 1
        )
        np.add.at(
            self.hist_output, (codes, np.minimum(_CLIENT_HIST.bin_of(output_tokens), _CLIENT_BINS - 1)), 1
        )
        self._add_series(codes, t)
        _, g, ts, prev = _sorted_with_prev(codes, t, self.last_t)
        has = ~np.isnan(prev)
        gap = (ts - prev)[has]
        self.gap_n += np.bincount(g[has], minlength=k)
        self.gap_s1 += np.bincount(g[has], weights=gap, minlength=k)
        self.gap_s2 += np.bincount(g[has], weights=gap**2, minlength=k)
        self._merge_runs(window_gap_runs(g, ts, prev, self.t0, self.cv_window_s))
        last = np.r_[g[1:] != g[:-1], True]
        self.last_t[g[last]] = ts[last]
        self.t_last = max(self.t_last, float(t.max()))

    def _add_series(self, codes: np.ndarray, t: np.ndarray) -> None:
        idx = window_index(t, self.t0, self.series_width_s)
        while idx.max() >= _SERIES_MAX:
            factor = int(round(self._ladder[0] / self.series_width_s))
            cols = self.series.shape[1]
            pad = (-cols) % factor
            s = np.concatenate([self.series, np.zeros((len(self.series), pad), np.int64)], axis=1)
            self.series = s.reshape(len(s), -1, factor).sum(axis=2)
            self.series_width_s, self._ladder = self._ladder[0], self._ladder[1:]
            idx = idx // factor
        if idx.max() >= self.series.shape[1]:
            grown = np.zeros(
                (len(self.series), min(_SERIES_MAX, max(int(idx.max()) + 1, 2 * self.series.shape[1]))),
                np.int64,
            )
            grown[:, : self.series.shape[1]] = self.series
            self.series = grown
        np.add.at(self.series, (codes, idx), 1)

    def _merge_runs(self, runs: pd.DataFrame) -> None:
        """Fold (client, window) gap runs into the open windows; close the windows that are over."""
        key = runs["key"].to_numpy()
        win = runs["window"].to_numpy()
        m = np.stack(
            [runs["n_gaps"].to_numpy(np.float64), runs["sum_s"].to_numpy(), runs["sumsq_s2"].to_numpy()], 1
        )
        first = np.r_[True, key[1:] != key[:-1]]
        last = np.r_[key[1:] != key[:-1], True]
        fk = key[first]
        cont = self.open_w[fk] == win[first]
        # the client's open window continues into this chunk: carry its moments over
        m[np.flatnonzero(first)[cont]] += np.stack([self.open_n, self.open_s1, self.open_s2], 1)[fk[cont]]
        ended = fk[~cont & (self.open_w[fk] >= 0)]
        self._close(np.stack([self.open_n, self.open_s1, self.open_s2], 1)[ended], ended)
        self._close(m[~last], key[~last])
        lk = key[last]
        self.open_w[lk] = win[last]
        self.open_n[lk], self.open_s1[lk], self.open_s2[lk] = m[last].T

    def _close(self, moments: np.ndarray, keys: np.ndarray) -> None:
        if len(keys) == 0:
            return
        cv = cv_from_moments(moments[:, 0], moments[:, 1], moments[:, 2], self.min_gaps)
        ok = ~np.isnan(cv)
        k = len(self.requests)
        self.cvw_sum += np.bincount(keys[ok], weights=moments[ok, 0] * cv[ok], minlength=k)
        self.cvw_n += np.bincount(keys[ok], weights=moments[ok, 0], minlength=k)
        self.window_cv_hist.add(cv[ok], moments[ok, 0])

    def result(self, top: int = 5) -> dict:
        """JSON-ready statistics plus ``"series"`` data for figures (the ``top`` largest clients)."""
        k = len(self.index)
        if k == 0:
            return {"clients": 0}
        open_keys = np.flatnonzero(self.open_w[:k] >= 0)
        self._close(np.stack([self.open_n, self.open_s1, self.open_s2], 1)[open_keys], open_keys)
        self.open_w[open_keys] = -1
        req = self.requests[:k]
        span = self.t_last - self.t0
        table = pd.DataFrame(
            {
                "client_id": self.index.astype(str),
                "requests": req,
                "share": req / req.sum(),
                "rate_rps": req / span if span > 0 else np.nan,
                "cv": np.where(self.cvw_n[:k] > 0, self.cvw_sum[:k] / np.maximum(self.cvw_n[:k], 1), np.nan),
                "cv_overall": cv_from_moments(self.gap_n[:k], self.gap_s1[:k], self.gap_s2[:k]),
                "mean_input": self.sum_input[:k] / req,
                "mean_output": self.sum_output[:k] / req,
            }
        ).sort_values(["requests", "client_id"], ascending=[False, True])
        top_rows = table.index[:top].to_numpy()
        return {
            "clients": k,
            "top_share": top_share(req),
            "rate_rps_weighted": weighted_quantiles(table["rate_rps"], table["requests"]),
            "cv_weighted": weighted_quantiles(table["cv"], table["requests"]),
            "largest": table.head(top).round(6).to_dict(orient="records"),
            "series": {
                "table": table.reset_index(drop=True),
                "window_cv_hist": self.window_cv_hist,
                "rate_width_s": self.series_width_s,
                "top_rates_rps": {self.index[i]: self._rate_curve(i, span) for i in top_rows},
                "top_lengths": {
                    self.index[i]: (self._hist(self.hist_input[i]), self._hist(self.hist_output[i]))
                    for i in top_rows
                },
            },
        }

    def _rate_curve(self, i: int, span_s: float) -> np.ndarray:
        n_windows = int(math.floor(span_s / self.series_width_s)) + 1
        return self.series[i, :n_windows] / self.series_width_s

    @staticmethod
    def _hist(counts: np.ndarray) -> IntHistogram:
        h = IntHistogram(exact_max=16, bins_per_octave=8)
        h.counts[: len(counts)] = counts
        nonzero = np.flatnonzero(counts)
        if len(nonzero):
            h.min, h.max = h.lower_edges()[nonzero[0]], h.upper_edges()[nonzero[-1]]
        return h
