"""Length statistics: quantiles of token counts and their shift over the hours of the day.

Hour of day is ``floor((timestamp mod 86400) / 3600)``: UTC for epoch
timestamps, hours since the start of the first day for relative ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from servegen_ml.stats.histogram import IntHistogram

QUANTILES = (0.5, 0.9, 0.99, 0.999)
HOURLY_QUANTILES = (0.5, 0.9, 0.99)


def hour_of_day(t_s: np.ndarray) -> np.ndarray:
    """Hour of day 0..23 of each timestamp (int64)."""
    return np.floor(np.mod(np.asarray(t_s, dtype=np.float64), 86400.0) / 3600.0).astype(np.int64)


def quantiles(values: np.ndarray, qs=QUANTILES) -> dict[str, float]:
    """Inverted-CDF quantiles of a sample, keyed p50, p90, ... (the definition IntHistogram follows)."""
    v = np.asarray(values)
    if len(v) == 0:
        return {}
    q = np.quantile(v, qs, method="inverted_cdf")
    return {f"p{f'{p * 100:g}'.replace('.', '')}": float(x) for p, x in zip(qs, q)}


def hourly_summary(t_s: np.ndarray, values: np.ndarray, qs=HOURLY_QUANTILES) -> pd.DataFrame:
    """Per hour of day: requests, mean and quantiles of ``values`` (only hours with requests)."""
    hours = hour_of_day(t_s)
    frame = pd.DataFrame({"hour": hours, "v": np.asarray(values)})
    rows = []
    for hour, group in frame.groupby("hour", sort=True):
        rows.append(
            {
                "hour": int(hour),
                "requests": len(group),
                "mean": float(group["v"].mean()),
                **quantiles(group["v"].to_numpy(), qs),
            }
        )
    return pd.DataFrame(rows)


class LengthAccumulator:
    """Streaming histograms of token-count fields, overall and per hour of day.

    Exact: counts, means, min, max, and quantiles below ``exact_max`` tokens;
    above that quantiles are within the IntHistogram's log-bin error (1.1 %).
    """

    def __init__(self, fields: tuple[str, ...], exact_max: int = 2048, bins_per_octave: int = 64):
        self.fields = fields
        self.overall = {f: IntHistogram(exact_max, bins_per_octave) for f in fields}
        self.hourly = {f: [IntHistogram(exact_max, bins_per_octave) for _ in range(24)] for f in fields}

    def add(self, t_s: np.ndarray, **values: np.ndarray) -> None:
        hours = hour_of_day(t_s)
        order = np.argsort(hours, kind="stable")
        bounds = np.searchsorted(hours[order], np.arange(25))
        for f in self.fields:
            v = np.asarray(values[f], dtype=np.int64)
            self.overall[f].add(v)
            by_hour = v[order]
            for h in range(24):
                if bounds[h + 1] > bounds[h]:
                    self.hourly[f][h].add(by_hour[bounds[h] : bounds[h + 1]])

    def result(self) -> dict:
        out = {}
        for f in self.fields:
            hours = [
                {
                    "hour": h,
                    "requests": hist.n,
                    "mean": hist.mean,
                    **{k: v for k, v in hist.summary(HOURLY_QUANTILES).items() if k.startswith("p")},
                }
                for h, hist in enumerate(self.hourly[f])
                if hist.n
            ]
            out[f] = {**self.overall[f].summary(QUANTILES), "hourly": hours}
        return out
