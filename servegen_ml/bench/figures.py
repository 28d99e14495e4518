"""PNG figures of a benchmark comparison (matplotlib, Agg): the real test trace, the reference and each workload.

Lengths, window CVs and token loads come from the metric results' plot
arrays (the numbers the metrics compared); dispersion across window sizes,
rate over time and client rates are recomputed with the same stats functions.
Each figure function returns its file name, or None when no trace has what it
needs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from servegen_ml.bench.compare import Comparison
from servegen_ml.core.atomic import atomic_path
from servegen_ml.stats.arrivals import dispersion_index
from servegen_ml.stats.clients import client_summary, weighted_cdf
from servegen_ml.stats.windows import window_counts

DPI = 90
DISPERSION_WINDOWS_S = (0.1, 0.3, 1, 3, 10, 30, 60, 120, 300, 600, 1800, 3600)
TEST_STYLE = {"color": "black", "linewidth": 2.2}
REFERENCE_STYLE = {"color": "0.55", "linewidth": 1.8, "linestyle": "--"}


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path.name


def _series(comp: Comparison, plotted: list[str]):
    """(label, style, trace, metric results as 'synthetic' side or None for the test) in drawing order."""
    yield f"real test ({comp.test.name})", TEST_STYLE, comp.test.trace, None
    yield f"reference ({comp.reference.name})", REFERENCE_STYLE, comp.reference.trace, comp.floor
    for name in plotted:
        w = next(w for w in comp.workloads if w.name == name)
        yield name, {"linewidth": 1.3}, w.trace, comp.results[name]


def _side(comp: Comparison, results: dict | None, metric: str, key: str):
    """A plot array of the synthetic side of ``results``, or of the real test trace when ``results`` is None."""
    source = results if results is not None else comp.floor
    plot = source.get(metric, {}).get("plot", {}).get(key)
    if plot is None:
        return None
    return plot["real"] if results is None else plot["synthetic"]


def _ecdf(ax, values, style, label):
    x = np.sort(np.asarray(values, dtype=np.float64))
    x = x[np.isfinite(x)]
    if len(x):
        ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=label, **style)


def length_cdfs(comp: Comparison, plotted: list[str], directory: Path) -> str | None:
    fields = list(comp.floor.get("M3_marginals", {}).get("plot", {}))
    if not fields:
        return None
    fig, axes = plt.subplots(1, len(fields), figsize=(4.2 * len(fields), 3.6), squeeze=False)
    for ax, name in zip(axes[0], fields):
        for label, style, _, results in _series(comp, plotted):
            grid = _side(comp, results, "M3_marginals", name)
            if grid is None:
                continue
            q = comp.floor["M3_marginals"]["plot"][name]["quantile"]
            x = np.expm1(grid) if name.startswith("log1p_") else grid
            ax.plot(x, q, label=label, **style)
        if name.startswith("log1p_"):
            ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel(name.removeprefix("log1p_"))
        ax.set_ylabel("CDF")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Length distributions")
    return _save(fig, directory / "length_cdfs.png")


def window_cv_cdf(comp: Comparison, plotted: list[str], directory: Path) -> str | None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, style, _, results in _series(comp, plotted):
        cv = _side(comp, results, "M2_burstiness", "window_cv")
        if cv is not None:
            _ecdf(ax, cv, style, label)
    ax.set_xscale("log")
    ax.set_xlabel("inter-arrival CV per 60 s window (aggregate)")
    ax.set_ylabel("CDF")
    ax.legend(fontsize=7)
    return _save(fig, directory / "window_cv_cdf.png")


def dispersion_curve(comp: Comparison, plotted: list[str], directory: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, style, trace, _ in _series(comp, plotted):
        idc = dispersion_index(trace["timestamp"].to_numpy(np.float64), DISPERSION_WINDOWS_S)
        w = np.array([k for k, v in idc.items() if np.isfinite(v) and v > 0])
        ax.plot(w, [idc[k] for k in w], marker="o", markersize=3, label=label, **style)
    ax.axhline(1.0, color="0.8", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("window (s)")
    ax.set_ylabel("index of dispersion of counts")
    ax.legend(fontsize=7)
    return _save(fig, directory / "dispersion.png")


def rate_over_time(comp: Comparison, plotted: list[str], directory: Path) -> str:
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for label, style, trace, _ in _series(comp, plotted):
        rate = window_counts(trace["timestamp"].to_numpy(np.float64), 60.0) / 60.0
        ax.plot(np.arange(len(rate)), rate, label=label, **style)
    ax.set_xlabel("minute since the trace's first request")
    ax.set_ylabel("requests / s (per minute)")
    ax.legend(fontsize=7)
    return _save(fig, directory / "rate_over_time.png")


def token_load_cdfs(comp: Comparison, plotted: list[str], directory: Path) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, style, _, results in _series(comp, plotted):
        load = _side(comp, results, "M6_token_load", "token_load")
        if load is None:
            continue
        for ax, kind in zip(axes, ("prefill", "decode")):
            _ecdf(ax, load[kind], style, label)
    for ax, kind in zip(axes, ("prefill", "decode")):
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel(f"{kind} tokens / s (10 s windows)")
        ax.set_ylabel("CDF")
    axes[0].legend(fontsize=7)
    return _save(fig, directory / "token_load_cdfs.png")


def client_rate_cdf(comp: Comparison, plotted: list[str], directory: Path) -> str | None:
    if comp.test.trace["client_id"].nunique() < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, style, trace, _ in _series(comp, plotted):
        clients: pd.DataFrame = client_summary(trace)
        if len(clients):
            x, cum = weighted_cdf(clients["rate_rps"].to_numpy(), clients["requests"].to_numpy())
            ax.step(x, cum, where="post", label=label, **style)
    ax.set_xscale("log")
    ax.set_xlabel("client rate (requests / s)")
    ax.set_ylabel("CDF (weighted by requests)")
    ax.legend(fontsize=7)
    return _save(fig, directory / "client_rate_cdf.png")


FIGURES = (length_cdfs, window_cv_cdf, dispersion_curve, rate_over_time, token_load_cdfs, client_rate_cdf)


def write_figures(comp: Comparison, plotted: list[str], directory: Path) -> list[str]:
    """Every figure for the test trace, the reference and the ``plotted`` workloads; the files written."""
    written = [f(comp, plotted, directory) for f in FIGURES]
    return [name for name in written if name]
