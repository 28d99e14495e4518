"""Rank dependence between request fields, overall and within client."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation; NaN when either side is constant or there are fewer than 3 pairs."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(sps.spearmanr(x, y).statistic)


def within_group_spearman(keys: np.ndarray, x: np.ndarray, y: np.ndarray, min_rows: int = 20) -> pd.DataFrame:
    """Spearman correlation inside each group with at least ``min_rows`` rows and non-constant x and y.

    Columns: key, rows, spearman. Ranks are average ranks within the group (ties as scipy does).
    """
    frame = pd.DataFrame(
        {"key": np.asarray(keys), "x": np.asarray(x, np.float64), "y": np.asarray(y, np.float64)}
    )
    frame = frame[frame.groupby("key")["x"].transform("size") >= min_rows]
    if frame.empty:
        return pd.DataFrame({"key": [], "rows": [], "spearman": []})
    grouped = frame.groupby("key")
    rx = grouped["x"].rank(method="average")
    ry = grouped["y"].rank(method="average")
    ranks = pd.DataFrame(
        {"key": frame["key"], "rx": rx, "ry": ry, "rxy": rx * ry, "rxx": rx * rx, "ryy": ry * ry}
    )
    s = ranks.groupby("key").agg(
        rows=("rx", "size"),
        sx=("rx", "sum"),
        sy=("ry", "sum"),
        sxy=("rxy", "sum"),
        sxx=("rxx", "sum"),
        syy=("ryy", "sum"),
    )
    n = s["rows"].to_numpy(np.float64)
    cov = s["sxy"] - s["sx"] * s["sy"] / n
    vx = s["sxx"] - s["sx"] ** 2 / n
    vy = s["syy"] - s["sy"] ** 2 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (cov / np.sqrt(vx * vy)).to_numpy()
    ok = (vx.to_numpy() > 1e-9) & (vy.to_numpy() > 1e-9)
    return pd.DataFrame(
        {"key": s.index.to_numpy()[ok], "rows": s["rows"].to_numpy()[ok], "spearman": rho[ok]}
    )


def weighted_within_group_spearman(
    keys: np.ndarray, x: np.ndarray, y: np.ndarray, min_rows: int = 20
) -> float:
    """Row-weighted mean of the per-group Spearman correlations (NaN when no group qualifies)."""
    per_group = within_group_spearman(keys, x, y, min_rows)
    if per_group.empty:
        return math.nan
    return float(np.average(per_group["spearman"], weights=per_group["rows"]))
