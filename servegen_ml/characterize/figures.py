"""PNG figures of a characterization (matplotlib, Agg backend): one function per figure.

Each function takes the stats and series of :class:`TraceCharacterizer` and a
path, draws, writes the PNG atomically and returns its title, or returns
``None`` when the trace lacks what the figure needs.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
from scipy import stats as sps

from servegen_ml.core.atomic import atomic_path
from servegen_ml.stats.clients import weighted_cdf

DPI = 90
FAMILY_STYLE = {
    "exponential": ("tab:green", ":"),
    "gamma": ("tab:orange", "--"),
    "weibull": ("tab:red", "-."),
}


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)


def _plain_log(ax, axis: str = "x") -> None:
    """Log axis labelled with plain numbers (a range of a decade or two gets crowded 10^x labels otherwise)."""
    getattr(ax, f"set_{axis}scale")("log")
    which = ax.xaxis if axis == "x" else ax.yaxis
    which.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    which.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    which.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _hours(start_s: np.ndarray) -> np.ndarray:
    return np.asarray(start_s, np.float64) / 3600.0


def arrivals_over_time(stats: dict, series: dict, path: Path) -> str:
    a, s = stats["arrivals"], series["arrivals"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    w = s["rate_width_s"]
    ax1.plot(_hours((np.arange(len(s["rate_rps"])) + 0.5) * w), s["rate_rps"], lw=0.8)
    ax1.set_ylabel("requests/s")
    ax1.set_title(f"Aggregate arrival rate ({w:g} s windows)")
    cv = s["cv"]
    ax2.plot(
        _hours(cv["start_s"] + a["cv_window_s"] / 2), cv["cv"], lw=0.8, color="tab:purple", marker=".", ms=3
    )
    ax2.axhline(1.0, color="grey", ls=":", lw=1, label="Poisson (CV = 1)")
    ax2.set_ylabel("inter-arrival CV")
    ax2.set_xlabel("hours since trace start")
    ax2.set_title(f"Inter-arrival CV per {a['cv_window_s']:g} s window")
    ax2.legend(loc="upper right", fontsize=8)
    _save(fig, path)
    return "Arrival rate and inter-arrival CV over time"


def arrivals_daily_weekly(stats: dict, series: dict, path: Path) -> str | None:
    span = stats["arrivals"]["span_s"]
    # a day and a half already overlays two (partial) days; a trace of "7 days" ends a moment early
    if span < 1.5 * 86400:
        return None
    h = series["arrivals"]["hourly"]
    weekly = span >= 6.9 * 86400
    fig, axes = plt.subplots(1, 2 if weekly else 1, figsize=(12 if weekly else 7, 4), squeeze=False)
    day = np.floor(h["start_s"] / 86400).astype(int)
    hod = np.mod(h["start_s"], 86400) / 3600
    ax = axes[0, 0]
    for d in np.unique(day):
        m = day == d
        ax.plot(hod[m], h["rate_rps"][m], lw=0.7, alpha=0.5, color="tab:blue")
    mean = h.groupby(np.floor(hod).astype(int))["rate_rps"].mean()
    ax.plot(mean.index, mean.to_numpy(), lw=2.2, color="black", label="mean over days")
    ax.set_xlabel("hour of day")
    ax.set_ylabel("requests/s")
    ax.set_title(f"Daily view: {len(np.unique(day))} days overlaid")
    ax.legend(fontsize=8)
    if weekly:
        ax = axes[0, 1]
        week = np.floor(h["start_s"] / (7 * 86400)).astype(int)
        how = np.mod(h["start_s"], 7 * 86400) / 86400
        for k in np.unique(week):
            m = week == k
            ax.plot(how[m], h["rate_rps"][m], lw=0.9, label=f"week {k + 1}")
        ax.set_xlabel("day of week (days since a trace-week start)")
        ax.set_ylabel("requests/s")
        ax.set_title("Weekly view")
        ax.legend(fontsize=8)
    _save(fig, path)
    return "Daily (and weekly) rate profile"


def _dist(family: str, params: dict):
    if family == "exponential":
        return sps.expon(scale=params["scale_s"])
    if family == "gamma":
        return sps.gamma(params["shape"], scale=params["scale_s"])
    return sps.weibull_min(params["shape"], scale=params["scale_s"])


def inter_arrival_fits(stats: dict, series: dict, path: Path) -> str | None:
    fits = stats["arrivals"]["inter_arrival"]["fits"]
    gaps = series["arrivals"]["gap_sample_s"]
    gaps = gaps[gaps > 0]
    if not fits.get("best") or len(gaps) < 10:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    lg = np.log10(gaps)
    # float noise makes a few near-zero gaps; the plotted range starts at the 0.1th percentile
    lo = np.quantile(lg, 0.001)
    bins = np.linspace(lo, lg.max(), 80)
    ax1.hist(lg[lg >= lo], bins=bins, density=True, color="lightgrey", label="observed")
    x = 10 ** np.linspace(lo, lg.max(), 400)
    srt = np.sort(gaps)
    # about 2000 points, denser in the tail, draw the same curve as every point would
    shown = np.unique(
        np.r_[
            np.linspace(0, len(srt) - 1, 1000).astype(int),
            len(srt) - np.unique(np.geomspace(1, len(srt), 1000).astype(int)),
        ]
    )
    ax2.loglog(srt[shown], 1 - shown / len(srt), color="black", lw=1.5, label="observed")
    for fam, res in fits["families"].items():
        if "params" not in res:
            continue
        color, ls = FAMILY_STYLE[fam]
        dist = _dist(fam, res["params"])
        label = f"{fam} (KS {res['ks_statistic']:.3f}{', best AIC' if fam == fits['best'] else ''})"
        # density of log10(gap) = f(gap) * gap * ln 10
        ax1.plot(np.log10(x), dist.pdf(x) * x * math.log(10), color=color, ls=ls, lw=1.5, label=label)
        ax2.loglog(x, dist.sf(x), color=color, ls=ls, lw=1.5, label=fam)
    ax1.set_xlabel("log10 inter-arrival time (s)")
    ax1.set_ylabel("density")
    ax1.set_title(f"Inter-arrival times and fits (zero gaps: {fits['zero_share']:.1%})")
    ax1.legend(fontsize=7)
    ax2.set_xlim(10**lo, None)
    ax2.set_ylim(max(1.0 / len(srt), 1e-6), 1.05)
    ax2.set_xlabel("inter-arrival time (s)")
    ax2.set_ylabel("P(gap > x)")
    ax2.set_title("Tail (complementary CDF)")
    ax2.legend(fontsize=7)
    _save(fig, path)
    return "Inter-arrival distribution with Exponential, Gamma and Weibull fits"


def dispersion(stats: dict, path: Path) -> str | None:
    d = {
        float(k): v for k, v in stats["arrivals"]["dispersion"].items() if v is not None and not math.isnan(v)
    }
    if len(d) < 2:
        return None
    w = np.array(sorted(d))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(w, [d[k] for k in w], marker="o")
    ax.axhline(1.0, color="grey", ls=":", label="Poisson")
    ax.set_xlabel("window size (s)")
    ax.set_ylabel("index of dispersion (var/mean of counts)")
    ax.set_title("Burstiness across time scales")
    ax.legend(fontsize=8)
    _save(fig, path)
    return "Index of dispersion across window sizes"


def lengths(stats: dict, series: dict, path: Path) -> str:
    hists = series["lengths"]["hist"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, color in (("input_tokens", "tab:blue"), ("output_tokens", "tab:orange")):
        x, f = hists[name].cdf()
        ax1.step(np.maximum(x, 1), f, where="post", color=color, label=name.replace("_", " "))
        ax2.loglog(np.maximum(x, 1), np.maximum(1 - f, 1e-12), color=color, label=name.replace("_", " "))
    ax1.set_xscale("log")
    ax1.set_xlabel("tokens")
    ax1.set_ylabel("fraction of requests <= x")
    ax1.set_title("Length distributions (body)")
    ax1.legend(fontsize=8)
    n = max(hists["input_tokens"].n, 1)
    ax2.set_ylim(1.0 / n, 1.05)
    ax2.set_xlabel("tokens")
    ax2.set_ylabel("P(length > x)")
    ax2.set_title("Length distributions (tail)")
    ax2.legend(fontsize=8)
    _save(fig, path)
    return "Input and output length distributions"


def lengths_by_hour(stats: dict, path: Path) -> str | None:
    hourly = {k: stats["lengths"][k]["hourly"] for k in ("input_tokens", "output_tokens")}
    if sum(1 for h in hourly["input_tokens"] if h["requests"] >= 30) < 3:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (name, rows) in zip(axes, hourly.items()):
        rows = [r for r in rows if r["requests"] >= 30]
        hours = [r["hour"] for r in rows]
        for key, style in (("mean", "-"), ("p50", "--"), ("p90", "-."), ("p99", ":")):
            ax.plot(hours, [r[key] for r in rows], ls=style, marker=".", label=key)
        _plain_log(ax, "y")
        ax.set_xlabel("hour of day")
        ax.set_ylabel("tokens")
        ax.set_title(f"{name.replace('_', ' ')} by hour of day")
        ax.legend(fontsize=8)
    _save(fig, path)
    return "Length shift over the hours of the day"


def clients_overview(stats: dict, series: dict, path: Path) -> str | None:
    if "clients" not in stats:
        return None
    table = series["clients"]["table"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    x, f = weighted_cdf(table["rate_rps"], table["requests"])
    axes[0].step(x, f, where="post")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("client rate (requests/s)")
    axes[0].set_ylabel("fraction of traffic")
    axes[0].set_title("Client rate, traffic-weighted CDF")
    x, f = weighted_cdf(table["cv"], table["requests"])
    axes[1].step(x, f, where="post", color="tab:purple")
    axes[1].axvline(1.0, color="grey", ls=":", label="Poisson")
    _plain_log(axes[1], "x")
    axes[1].set_xlabel(
        f"client inter-arrival CV (per {stats['arrivals']['cv_window_s']:g} s window, weighted mean)"
    )
    axes[1].set_ylabel("fraction of traffic")
    axes[1].set_title("Client burstiness, traffic-weighted CDF")
    axes[1].legend(fontsize=8)
    share = np.cumsum(table["requests"].to_numpy()) / table["requests"].sum()
    axes[2].plot(np.arange(1, len(share) + 1), share, marker=".")
    axes[2].set_xscale("log")
    axes[2].set_xlabel("number of largest clients")
    axes[2].set_ylabel("share of requests")
    axes[2].set_title("Traffic concentration")
    _save(fig, path)
    return "Client rates, burstiness and concentration"


def clients_largest(stats: dict, series: dict, path: Path) -> str | None:
    if "clients" not in stats:
        return None
    c = series["clients"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    w = c["rate_width_s"]
    for cid, rate in c["top_rates_rps"].items():
        axes[0].plot(_hours((np.arange(len(rate)) + 0.5) * w), rate, lw=0.8, label=str(cid))
    axes[0].set_xlabel("hours since trace start")
    axes[0].set_ylabel("requests/s")
    axes[0].set_title(f"Largest clients: rate ({w:g} s windows)")
    axes[0].legend(fontsize=7)
    for k, name in ((0, "input"), (1, "output")):
        ax = axes[1 + k]
        for cid, hists in c["top_lengths"].items():
            x, f = hists[k].cdf()
            ax.step(np.maximum(x, 1), f, where="post", label=str(cid))
        ax.set_xscale("log")
        ax.set_xlabel(f"{name} tokens")
        ax.set_ylabel("fraction of the client's requests")
        ax.set_title(f"Largest clients: {name} length CDF")
        ax.legend(fontsize=7)
    _save(fig, path)
    return "Rate curves and length distributions of the largest clients"


def multimodal(stats: dict, series: dict, path: Path) -> str | None:
    if "multimodal" not in stats:
        return None
    s = series["multimodal"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for col, hist in s["items"].items():
        label = col.removesuffix("_tokens")
        shown = min(int(hist.max) + 1, 64)
        axes[0].bar(np.arange(shown), hist.counts[:shown] / max(hist.n, 1), alpha=0.6, label=label)
        x, f = s["tokens_per_item"][col].cdf()
        axes[1].step(np.maximum(x, 1), f, where="post", label=label)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("items per request")
    axes[0].set_ylabel("fraction of requests")
    axes[0].set_title("Items per request")
    axes[0].legend(fontsize=8)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("tokens per item")
    axes[1].set_ylabel("fraction of items <= x")
    axes[1].set_title("Tokens per item")
    axes[1].legend(fontsize=8)
    p = s["pairs"]
    axes[2].hexbin(
        np.log10(1 + p["text_tokens"]),
        np.log10(1 + p["media_tokens"]),
        gridsize=40,
        bins="log",
        cmap="viridis",
    )
    axes[2].set_xlabel("log10(1 + text tokens)")
    axes[2].set_ylabel("log10(1 + media tokens)")
    axes[2].set_title(
        f"Text vs media (Spearman {stats['multimodal']['text_vs_media']['spearman_sampled']:.2f})"
    )
    w = s["rate_width_s"]
    for name, rate in s["media_tokens_per_s"].items():
        axes[3].plot(_hours((np.arange(len(rate)) + 0.5) * w), rate, lw=0.8, label=f"{name} tokens")
    axes[3].plot(
        _hours((np.arange(len(s["text_tokens_per_s"])) + 0.5) * w),
        s["text_tokens_per_s"],
        lw=0.8,
        color="grey",
        alpha=0.7,
        label="text tokens",
    )
    axes[3].set_xlabel("hours since trace start")
    axes[3].set_ylabel("tokens/s")
    axes[3].set_title(f"Token rate ({w:g} s windows)")
    axes[3].legend(fontsize=8)
    _save(fig, path)
    return "Multimodal structure"


def reasoning(stats: dict, series: dict, path: Path) -> str | None:
    if "reasoning" not in stats:
        return None
    s, r = series["reasoning"], stats["reasoning"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    edges, share = s["ratio_hist"].density(50)
    ax1.bar(edges[:-1], share, width=np.diff(edges), align="edge", color="tab:green")
    bc = r["ratio"].get("bimodality_coefficient", math.nan)
    ax1.set_xlabel("reasoning tokens / output tokens")
    ax1.set_ylabel("fraction of requests")
    ax1.set_title(f"Reasoning ratio (bimodality coeff. {bc:.2f}; > 0.56: two modes)")
    p = s["pairs"]
    ax2.hexbin(
        np.log10(1 + p["reasoning_tokens"]),
        np.log10(1 + p["answer_tokens"]),
        gridsize=40,
        bins="log",
        cmap="viridis",
    )
    ax2.set_xlabel("log10(1 + reasoning tokens)")
    ax2.set_ylabel("log10(1 + answer tokens)")
    ax2.set_title("Reasoning vs answer tokens")
    _save(fig, path)
    return "Reasoning ratio and reasoning vs answer tokens"


def conversations(stats: dict, series: dict, path: Path) -> str | None:
    if "conversations" not in stats:
        return None
    s, c = series["conversations"], stats["conversations"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    turns = s["turns"]
    shown = min(int(turns.max) + 1, 64)
    ax1.bar(np.arange(1, shown), turns.counts[1:shown] / max(turns.n, 1))
    ax1.set_yscale("log")
    ax1.set_xlabel("turns per conversation")
    ax1.set_ylabel("fraction of conversations")
    ax1.set_title(f"Turns per conversation (follow-up share {c['follow_up_share']:.1%})")
    x, f = s["gaps"].cdf()
    keep = np.r_[True, np.diff(f) > 0] & (f > 0)
    ax2.step(x[keep], f[keep], where="post")
    ax2.set_xscale("log")
    ax2.set_xlabel("inter-turn gap (s, arrival to arrival)")
    ax2.set_ylabel("fraction of follow-ups <= x")
    ax2.set_title("Inter-turn gaps")
    _save(fig, path)
    return "Conversations"


def make_all(stats: dict, series: dict, out: Path) -> dict[str, str]:
    """Draw every figure the trace supports; returns {file name: title}."""
    made = {}
    for name, fn, args in (
        ("arrivals_rate_cv.png", arrivals_over_time, (stats, series)),
        ("arrivals_daily_weekly.png", arrivals_daily_weekly, (stats, series)),
        ("arrivals_fits.png", inter_arrival_fits, (stats, series)),
        ("arrivals_dispersion.png", dispersion, (stats,)),
        ("lengths.png", lengths, (stats, series)),
        ("lengths_by_hour.png", lengths_by_hour, (stats,)),
        ("clients.png", clients_overview, (stats, series)),
        ("clients_largest.png", clients_largest, (stats, series)),
        ("multimodal.png", multimodal, (stats, series)),
        ("reasoning.png", reasoning, (stats, series)),
        ("conversations.png", conversations, (stats, series)),
    ):
        title = fn(*args, out / name)
        if title:
            made[name] = title
    return made
