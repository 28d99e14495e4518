"""One short PNG of a generated workload: rate over time and length CDFs (``generate plot=true``).

:class:`WorkloadSummary` gathers what the figure needs chunk by chunk in
bounded memory (counts per rate window, and per token value), so a streamed
workload of any length is drawn exactly. For the full analysis of a workload,
run ``servegen-ml characterize`` on it.
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


class WorkloadSummary:
    """Counts per rate window and per token value of a workload, added chunk by chunk."""

    def __init__(self, duration_s: float):
        self.duration_s = float(duration_s)
        self.width_s = rate_window_s(duration_s)
        self.window_counts = np.zeros(max(int(np.ceil(duration_s / self.width_s)), 1), dtype=np.int64)
        self.token_counts: dict[str, np.ndarray] = {}
        self.clients: set[str] = set()
        self.requests = 0

    def add(self, trace: pd.DataFrame) -> None:
        n = len(self.window_counts)
        idx = window_index(trace["timestamp"].to_numpy(np.float64), 0.0, self.width_s)
        self.window_counts += np.bincount(idx[(idx >= 0) & (idx < n)], minlength=n)
        for column in ("input_tokens", "output_tokens", "reasoning_tokens"):
            if column in trace.columns:
                values = np.maximum(trace[column].to_numpy(np.int64), 0)
                counts = np.bincount(values)
                old = self.token_counts.get(column, np.zeros(0, dtype=np.int64))
                size = max(len(old), len(counts))
                self.token_counts[column] = np.pad(old, (0, size - len(old))) + np.pad(
                    counts, (0, size - len(counts))
                )
        self.clients.update(trace["client_id"].astype(str).unique())
        self.requests += len(trace)

    def rate(self) -> tuple[np.ndarray, np.ndarray]:
        """(window midpoints s, requests/s), as :func:`rate_series`."""
        n = len(self.window_counts)
        seconds = np.minimum(self.width_s, self.duration_s - np.arange(n) * self.width_s)
        return (np.arange(n) + 0.5) * self.width_s, self.window_counts / np.maximum(seconds, 1e-9)


def _ecdf(ax, value_counts: np.ndarray, label: str) -> None:
    """The empirical CDF from counts per token value (values < 1 drawn at 1)."""
    counts = value_counts.astype(np.float64).copy()
    if len(counts) > 1:
        counts[1] += counts[0]
    counts[0] = 0.0 if len(counts) > 1 else counts[0]
    x = np.flatnonzero(counts)
    y = np.cumsum(counts[x]) / max(counts.sum(), 1.0)
    ax.step(np.maximum(x, 1), y, where="post", label=label)


def workload_figure(
    trace: pd.DataFrame | WorkloadSummary, duration_s: float, path: str | Path, title: str = ""
) -> Path:
    """Write the figure of ``trace`` (timestamps in ``[0, duration_s)``, or its summary) to ``path`` atomically."""
    path = Path(path)
    summary = trace
    if isinstance(trace, pd.DataFrame):
        summary = WorkloadSummary(duration_s)
        summary.add(trace)
    width = summary.width_s
    mid_s, rate = summary.rate()
    n = summary.requests
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    scale, unit = (3600.0, "h") if duration_s >= 3 * 3600 else (60.0, "min")
    ax1.plot(mid_s / scale, rate, lw=0.9)
    ax1.axhline(n / duration_s, color="grey", ls=":", lw=1, label=f"mean {n / duration_s:.3g} req/s")
    ax1.set_xlabel(f"time ({unit})")
    ax1.set_ylabel("requests/s")
    ax1.set_title(f"Arrival rate ({width:g} s windows)")
    ax1.legend(fontsize=8)
    for column, counts in summary.token_counts.items():
        _ecdf(ax2, counts, column.replace("_", " "))
    ax2.set_xscale("log")
    ax2.set_xlabel("tokens per request (values < 1 drawn at 1)")
    ax2.set_ylabel("fraction of requests <= x")
    ax2.set_title("Length CDFs")
    ax2.legend(fontsize=8)
    clients = len(summary.clients)
    fig.suptitle(title or f"{n:,} requests from {clients} client(s) over {duration_s:g} s", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path
