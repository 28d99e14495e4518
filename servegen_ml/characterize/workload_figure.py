"""One short PNG of a generated workload: rate over time and length CDFs (``generate plot=true``).

For the full analysis of a workload, run ``servegen-ml characterize`` on it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from servegen_ml.core.atomic import atomic_path
from servegen_ml.stats.windows import window_index

DPI = 90
WINDOW_LADDER_S = (1.0, 10.0, 60.0, 600.0, 3600.0)
MIN_WINDOWS = 30


def rate_window_s(duration_s: float) -> float:
    """The largest ladder width that still gives at least MIN_WINDOWS windows (the smallest otherwise)."""
    fitting = [w for w in WINDOW_LADDER_S if duration_s / w >= MIN_WINDOWS]
    return fitting[-1] if fitting else WINDOW_LADDER_S[0]


def rate_series(t_s: np.ndarray, duration_s: float, width_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(window midpoints s, requests/s) over ``[0, duration_s)``, windows anchored at 0."""
    n = max(int(np.ceil(duration_s / width_s)), 1)
    idx = window_index(t_s, 0.0, width_s)
    counts = np.bincount(idx[(idx >= 0) & (idx < n)], minlength=n)
    # The last window may be cut short by the duration; divide by the seconds it covers.
    seconds = np.minimum(width_s, duration_s - np.arange(n) * width_s)
    return (np.arange(n) + 0.5) * width_s, counts / np.maximum(seconds, 1e-9)


def _ecdf(ax, values: np.ndarray, label: str) -> None:
    x = np.sort(np.maximum(np.asarray(values, np.float64), 1.0))
    ax.step(x, np.arange(1, len(x) + 1) / max(len(x), 1), where="post", label=label)


def workload_figure(trace: pd.DataFrame, duration_s: float, path: str | Path, title: str = "") -> Path:
    """Write the figure of ``trace`` (timestamps in ``[0, duration_s)``) to ``path`` atomically."""
    path = Path(path)
    t = trace["timestamp"].to_numpy(np.float64)
    width = rate_window_s(duration_s)
    mid_s, rate = rate_series(t, duration_s, width)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    scale, unit = (3600.0, "h") if duration_s >= 3 * 3600 else (60.0, "min")
    ax1.plot(mid_s / scale, rate, lw=0.9)
    ax1.axhline(
        len(t) / duration_s, color="grey", ls=":", lw=1, label=f"mean {len(t) / duration_s:.3g} req/s"
    )
    ax1.set_xlabel(f"time ({unit})")
    ax1.set_ylabel("requests/s")
    ax1.set_title(f"Arrival rate ({width:g} s windows)")
    ax1.legend(fontsize=8)
    _ecdf(ax2, trace["input_tokens"].to_numpy(), "input tokens")
    _ecdf(ax2, trace["output_tokens"].to_numpy(), "output tokens")
    if "reasoning_tokens" in trace.columns:
        _ecdf(ax2, trace["reasoning_tokens"].to_numpy(), "reasoning tokens")
    ax2.set_xscale("log")
    ax2.set_xlabel("tokens per request (values < 1 drawn at 1)")
    ax2.set_ylabel("fraction of requests <= x")
    ax2.set_title("Length CDFs")
    ax2.legend(fontsize=8)
    clients = trace["client_id"].nunique()
    fig.suptitle(title or f"{len(t):,} requests from {clients} client(s) over {duration_s:g} s", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path
