"""Fidelity metrics (docs/benchmark.md): distances between a synthetic and a real trace, lower is better.

Each metric is a pure function ``metric(synthetic, real) -> dict`` with

* ``distance``: the headline number (float), or ``None`` when the metric is
  absent (a field missing from either trace, or too little data), with the
  reason in ``absent``;
* ``components``: every sub-distance (float or ``None``); ``distance`` is the
  mean of the ones named in ``headline`` that are available;
* ``stats``: small JSON-ready statistics of both traces (``synthetic``/``real``);
* ``plot``: arrays for figures (not JSON; :func:`jsonable` drops it).

The same code computes d(synthetic, real test) and the noise floor
d(real reference, real test); :func:`noise_floor_ratio` divides them. All
metrics are 0 for identical traces and symmetric in their two arguments except
M6 (relative error, relative to the real trace). "Traffic weighted" means every
request counts once (distributions pool all requests; client distributions
weight each client by its requests).

M1 (held-out NLL) is not a two-trace distance: :func:`m1_log_likelihood`
summarizes a generator's ``log_prob`` frame. M7 (provisioning) lives with the
serving simulator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats as sps

from servegen_ml.generators.base import Generator, summarize_log_prob
from servegen_ml.stats.arrivals import cv_per_window, dispersion_index
from servegen_ml.stats.clients import client_summary, client_window_cvs, top_share
from servegen_ml.stats.conversations import conversation_stats
from servegen_ml.stats.dependence import spearman, weighted_within_group_spearman
from servegen_ml.stats.multimodal import media_columns, modality
from servegen_ml.stats.reasoning import reasoning_ratio
from servegen_ml.stats.windows import window_counts, window_sums
from servegen_ml.trace.schema import list_lengths, list_values

DISPERSION_WINDOWS_S = (1, 10, 60, 600)
BURST_CV_WINDOW_S = 60.0
BURST_MIN_GAPS = 5
CLIENT_CV_WINDOW_S = 600.0
CLIENT_MIN_GAPS = 10
ACF_LAGS_MIN = (1, 5, 30)
LOAD_WINDOW_S = 10.0
CALIBRATION_BIN_S = 3600.0
BIN_COVER_SLACK = 0.02  # M9 counts a last bin the common span covers to 98 %
# Two distances this close are indistinguishable: keeps the ratio finite when the floor is 0.
NOISE_FLOOR_EPS = 1e-3
# CVs are compared on a log scale; a window of equal gaps (CV 0) is floored here.
MIN_CV = 1e-3
# M4's floor (m4_floor): block bootstrap of the two real traces in windows of this length.
FLOOR_BLOCK_S = 60.0
FLOOR_RESAMPLES = 100
FLOOR_SEED = 0
_QUANTILE_GRID = np.linspace(0, 1, 101)


def _result(components: dict, headline: list[str], stats: dict, plot: dict) -> dict:
    available = [components[c] for c in headline if components.get(c) is not None]
    absent = [c for c, v in components.items() if v is None]
    out = {
        "distance": float(np.mean(available)) if available else None,
        "headline": headline,
        "components": components,
        "stats": stats,
        "plot": plot,
    }
    if not available:
        out["absent"] = "not enough data in one of the traces for any component"
    if absent:
        out["absent_components"] = absent
    return out


def _absent(reason: str) -> dict:
    return {"distance": None, "absent": reason, "components": {}, "stats": {}, "plot": {}}


def _missing(column: str, synthetic: pd.DataFrame, real: pd.DataFrame) -> str | None:
    where = [name for name, df in (("synthetic", synthetic), ("real", real)) if column not in df.columns]
    return f"no {column} in the {' and '.join(where)} trace" if where else None


def _ks(a: np.ndarray, b: np.ndarray) -> float | None:
    return float(sps.ks_2samp(a, b).statistic) if len(a) and len(b) else None


def _wasserstein(a, b, wa=None, wb=None) -> float | None:
    return float(sps.wasserstein_distance(a, b, wa, wb)) if len(a) and len(b) else None


def _timestamps(trace: pd.DataFrame) -> np.ndarray:
    return np.sort(trace["timestamp"].to_numpy(np.float64))


def _log_cv(cv: np.ndarray) -> np.ndarray:
    cv = np.asarray(cv, np.float64)
    return np.log(np.maximum(cv[~np.isnan(cv)], MIN_CV))


# ---------------------------------------------------------------- M1


def m1_log_likelihood(log_prob: pd.DataFrame) -> dict:
    """M1: held-out NLL per event (nats) of a generator's ``log_prob`` frame, total and per part."""
    summary = summarize_log_prob(log_prob)
    parts = {k.removeprefix("nll_"): v for k, v in summary.items() if k.startswith("nll_")}
    return {
        "distance": parts.get("total"),
        "components": parts,
        "stats": {"events": summary["events"]},
        "plot": {},
    }


def m1_for_generator(generator: Generator, trace: pd.DataFrame, window_end_s: float | None = None) -> dict:
    """M1 of ``generator`` on a held-out real ``trace``."""
    return m1_log_likelihood(generator.log_prob(trace, window_end_s))


# ---------------------------------------------------------------- M2


def m2_burstiness(
    synthetic: pd.DataFrame,
    real: pd.DataFrame,
    windows_s=DISPERSION_WINDOWS_S,
    cv_window_s: float = BURST_CV_WINDOW_S,
    min_gaps: int = BURST_MIN_GAPS,
) -> dict:
    """M2: index of dispersion at each window (mean |log ratio|) and per-window inter-arrival CV
    (Wasserstein on log CV) of the aggregate and of the client streams (weighted by gaps)."""
    ts, tr = _timestamps(synthetic), _timestamps(real)
    idc_s, idc_r = dispersion_index(ts, windows_s), dispersion_index(tr, windows_s)
    log_ratios = {
        w: abs(math.log(idc_s[w] / idc_r[w]))
        for w in idc_s
        if idc_s[w] > 0 and idc_r[w] > 0 and not (math.isnan(idc_s[w]) or math.isnan(idc_r[w]))
    }
    cv_s = cv_per_window(ts, cv_window_s, min_gaps)["cv"].to_numpy()
    cv_r = cv_per_window(tr, cv_window_s, min_gaps)["cv"].to_numpy()
    ccv_s = client_window_cvs(synthetic, cv_window_s, min_gaps)
    ccv_r = client_window_cvs(real, cv_window_s, min_gaps)
    components = {
        "dispersion_log_ratio": float(np.mean(list(log_ratios.values()))) if log_ratios else None,
        **{f"dispersion_log_ratio_{w:g}s": log_ratios.get(float(w)) for w in windows_s},
        "window_cv_wasserstein": _wasserstein(_log_cv(cv_s), _log_cv(cv_r)),
        "client_window_cv_wasserstein": _wasserstein(
            _log_cv(ccv_s["cv"]), _log_cv(ccv_r["cv"]), ccv_s["n_gaps"], ccv_r["n_gaps"]
        ),
    }
    stats = {
        "dispersion_index": {"synthetic": _finite(idc_s), "real": _finite(idc_r)},
        "median_window_cv": {"synthetic": _nanmedian(cv_s), "real": _nanmedian(cv_r)},
        "cv_window_s": cv_window_s,
    }
    plot = {
        "window_cv": {"synthetic": cv_s[~np.isnan(cv_s)], "real": cv_r[~np.isnan(cv_r)]},
        "client_window_cv": {"synthetic": ccv_s, "real": ccv_r},
    }
    return _result(
        components,
        ["dispersion_log_ratio", "window_cv_wasserstein", "client_window_cv_wasserstein"],
        stats,
        plot,
    )


def _finite(d: dict) -> dict:
    return {f"{k:g}": (None if math.isnan(v) else v) for k, v in d.items()}


def _nanmedian(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(np.median(x)) if len(x) else None


# ---------------------------------------------------------------- M3


def marginal_fields(trace: pd.DataFrame) -> dict[str, np.ndarray]:
    """The per-request (or per-item) values M3 compares, on the scale it compares them."""
    fields = {
        "log1p_input_tokens": np.log1p(trace["input_tokens"].to_numpy(np.float64)),
        "log1p_output_tokens": np.log1p(trace["output_tokens"].to_numpy(np.float64)),
    }
    if "reasoning_tokens" in trace.columns:
        fields["reasoning_ratio"] = reasoning_ratio(trace["reasoning_tokens"], trace["output_tokens"])
    for col in media_columns(trace.columns):
        fields[f"{modality(col)}_items_per_request"] = list_lengths(trace[col]).astype(np.float64)
        fields[f"log1p_{modality(col)}_tokens_per_item"] = np.log1p(
            list_values(trace[col]).astype(np.float64)
        )
    return fields


def m3_marginals(synthetic: pd.DataFrame, real: pd.DataFrame) -> dict:
    """M3: KS and Wasserstein between the marginals of every field both traces have (headline: mean KS)."""
    fs, fr = marginal_fields(synthetic), marginal_fields(real)
    components, stats, plot, headline = {}, {}, {}, []
    for name in fr:
        if name not in fs:
            components[f"{name}.ks"] = components[f"{name}.wasserstein"] = None
            continue
        a, b = fs[name], fr[name]
        components[f"{name}.ks"] = _ks(a, b)
        components[f"{name}.wasserstein"] = _wasserstein(a, b)
        headline.append(f"{name}.ks")
        stats[name] = {"mean": {"synthetic": _mean(a), "real": _mean(b)}}
        plot[name] = {"quantile": _QUANTILE_GRID, "synthetic": _grid(a), "real": _grid(b)}
    for name in fs.keys() - fr.keys():
        components[f"{name}.ks"] = components[f"{name}.wasserstein"] = None
    return _result(components, headline, stats, plot)


def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if len(x) else None


def _grid(x: np.ndarray) -> np.ndarray:
    return np.quantile(x, _QUANTILE_GRID) if len(x) else np.full(len(_QUANTILE_GRID), np.nan)


# ---------------------------------------------------------------- M4


def dependence_stats(trace: pd.DataFrame, min_rows: int = 20) -> dict[str, float]:
    """Spearman (input, output) and, with reasoning, (input, reasoning ratio): overall and within client."""
    return _dependence(_dependence_columns(trace), np.arange(len(trace)), min_rows)


def _dependence_columns(trace: pd.DataFrame) -> dict[str, np.ndarray]:
    cols = {
        "input": trace["input_tokens"].to_numpy(np.float64),
        "output": trace["output_tokens"].to_numpy(np.float64),
        "client": pd.factorize(trace["client_id"])[0],
    }
    if "reasoning_tokens" in trace.columns:
        cols["reasoning"] = trace["reasoning_tokens"].to_numpy(np.float64)
    return cols


def _dependence(cols: dict[str, np.ndarray], rows: np.ndarray, min_rows: int) -> dict[str, float]:
    inp, out, keys = cols["input"][rows], cols["output"][rows], cols["client"][rows]
    stats = {
        "input_output.overall": spearman(inp, out),
        "input_output.within_client": weighted_within_group_spearman(keys, inp, out, min_rows),
    }
    if "reasoning" in cols:
        has = out > 0
        ratio = cols["reasoning"][rows][has] / out[has]
        stats["input_ratio.overall"] = spearman(inp[has], ratio)
        stats["input_ratio.within_client"] = weighted_within_group_spearman(
            keys[has], inp[has], ratio, min_rows
        )
    return stats


def m4_dependence(synthetic: pd.DataFrame, real: pd.DataFrame, min_rows: int = 20) -> dict:
    """M4: absolute difference of Spearman correlations, overall and within client (row-weighted mean)."""
    ds, dr = dependence_stats(synthetic, min_rows), dependence_stats(real, min_rows)
    components = {}
    for name in dr.keys() | ds.keys():
        a, b = ds.get(name, math.nan), dr.get(name, math.nan)
        components[name] = None if math.isnan(a) or math.isnan(b) else abs(a - b)
    components = dict(sorted(components.items()))
    stats = {k: {"synthetic": _none_nan(ds.get(k)), "real": _none_nan(dr.get(k))} for k in components}
    return _result(components, list(components), stats, {})


def dependence_sampling_sd(
    trace: pd.DataFrame,
    rng: np.random.Generator,
    block_s: float = FLOOR_BLOCK_S,
    resamples: int = FLOOR_RESAMPLES,
    min_rows: int = 20,
) -> dict[str, float]:
    """Standard deviation of each :func:`dependence_stats` statistic under a block bootstrap of
    ``trace``: its ``block_s`` windows drawn with replacement, so the requests of a burst or a
    conversation inside a window stay together."""
    cols = _dependence_columns(trace)
    t = trace["timestamp"].to_numpy(np.float64)  # in row order, unlike _timestamps
    block = np.floor((t - t.min()) / block_s).astype(np.int64) if len(t) else t.astype(np.int64)
    order = np.argsort(block, kind="stable")
    _, starts, counts = np.unique(block[order], return_index=True, return_counts=True)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        pick = rng.integers(0, len(starts), len(starts))
        n = counts[pick]
        first = np.repeat(starts[pick] - np.cumsum(n) + n, n)  # each drawn window's rows in order
        rows = order[first + np.arange(n.sum())]
        for name, value in _dependence(cols, rows, min_rows).items():
            draws.setdefault(name, []).append(value)
    return {name: _nan_sd(values) for name, values in draws.items()}


def _nan_sd(values: list[float]) -> float:
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    return float(np.std(v, ddof=1)) if len(v) > 1 else math.nan


def m4_floor(reference: pd.DataFrame, test: pd.DataFrame, rng: np.random.Generator) -> dict:
    """M4's noise floor: |reference - test| per statistic, raised to the difference two independent
    real samples of these sizes are expected to show, sqrt(2 / pi) * sqrt(sd_ref^2 + sd_test^2)
    (sds from :func:`dependence_sampling_sd`). One pair of halves can agree by luck far below
    that (Mooncake's hour: 0.005 where 0.014 is expected), and the ratio of
    a generator with exactly the right correlation would then read several times the floor.
    The observed differences stay in ``stats``."""
    observed = m4_dependence(reference, test)
    sd_ref, sd_test = dependence_sampling_sd(reference, rng), dependence_sampling_sd(test, rng)
    components, stats = {}, observed["stats"]
    for name, d in observed["components"].items():
        expected = math.sqrt(2 / math.pi) * math.hypot(
            sd_ref.get(name, math.nan), sd_test.get(name, math.nan)
        )
        components[name] = None if d is None else (d if math.isnan(expected) else max(d, expected))
        stats[name] = {**stats[name], "observed_difference": d, "expected_difference": _none_nan(expected)}
    return _result(components, observed["headline"], stats, {})


def _none_nan(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


# ---------------------------------------------------------------- M5


def minute_rates(trace: pd.DataFrame) -> np.ndarray:
    """Requests per full minute divided by the mean (1.0 = average minute)."""
    counts = window_counts(_timestamps(trace), 60.0).astype(np.float64)
    return counts / counts.mean() if len(counts) and counts.mean() > 0 else np.zeros(0)


def autocorrelation(x: np.ndarray, lag: int) -> float:
    """Sample autocorrelation at ``lag``; NaN with fewer than lag + 3 points or a constant series."""
    x = np.asarray(x, np.float64)
    if len(x) < lag + 3:
        return math.nan
    d = x - x.mean()
    denom = float((d * d).sum())
    return float((d[:-lag] * d[lag:]).sum() / denom) if denom > 0 else math.nan


def m5_rate_dynamics(synthetic: pd.DataFrame, real: pd.DataFrame, lags_min=ACF_LAGS_MIN) -> dict:
    """M5: Wasserstein between per-minute normalized rates; |difference| of their autocorrelation at each lag."""
    rs, rr = minute_rates(synthetic), minute_rates(real)
    components = {
        "rate_distribution_wasserstein": _wasserstein(rs, rr) if len(rs) >= 2 and len(rr) >= 2 else None
    }
    acf = {}
    for lag in lags_min:
        a, b = autocorrelation(rs, lag), autocorrelation(rr, lag)
        acf[f"{lag}min"] = {"synthetic": _none_nan(a), "real": _none_nan(b)}
        components[f"acf_lag_{lag}min"] = None if math.isnan(a) or math.isnan(b) else abs(a - b)
    stats = {
        "minutes": {"synthetic": len(rs), "real": len(rr)},
        "autocorrelation": acf,
        "rate_cv": {"synthetic": _std(rs), "real": _std(rr)},
    }
    return _result(components, list(components), stats, {"minute_rate": {"synthetic": rs, "real": rr}})


def _std(x: np.ndarray) -> float | None:
    return float(np.std(x)) if len(x) else None


# ---------------------------------------------------------------- M6


def token_load(trace: pd.DataFrame, window_s: float = LOAD_WINDOW_S) -> dict[str, np.ndarray]:
    """Prefill (input) and decode (output) tokens per second of arrivals in each full window."""
    t = trace["timestamp"].to_numpy(np.float64)
    return {
        "prefill": window_sums(t, trace["input_tokens"].to_numpy(np.float64), window_s) / window_s,
        "decode": window_sums(t, trace["output_tokens"].to_numpy(np.float64), window_s) / window_s,
    }


def m6_token_load(synthetic: pd.DataFrame, real: pd.DataFrame, window_s: float = LOAD_WINDOW_S) -> dict:
    """M6: relative error |syn - real| / real of the p50, p99 and max of per-window token load (not symmetric)."""
    ls, lr = token_load(synthetic, window_s), token_load(real, window_s)
    components, stats = {}, {}
    for kind in ("prefill", "decode"):
        for name, fn in (
            ("p50", lambda x: np.quantile(x, 0.5)),
            ("p99", lambda x: np.quantile(x, 0.99)),
            ("max", np.max),
        ):
            if len(ls[kind]) == 0 or len(lr[kind]) == 0:
                components[f"{kind}.{name}"] = None
                continue
            a, b = float(fn(ls[kind])), float(fn(lr[kind]))
            components[f"{kind}.{name}"] = abs(a - b) / b if b > 0 else (0.0 if a == 0 else None)
            stats[f"{kind}.{name}_tokens_per_s"] = {"synthetic": a, "real": b}
    stats["window_s"] = window_s
    return _result(components, list(components), stats, {"token_load": {"synthetic": ls, "real": lr}})


# ---------------------------------------------------------------- M8


def m8_conversations(synthetic: pd.DataFrame, real: pd.DataFrame) -> dict:
    """M8: KS of turns per conversation and of log inter-turn gaps, |difference| of the follow-up share."""
    missing = _missing("conversation_id", synthetic, real)
    if missing:
        return _absent(missing)
    cs, cr = conversation_stats(synthetic), conversation_stats(real)
    gs, gr = (
        np.log10(np.maximum(cs["inter_turn_gap_s"], 1e-3)),
        np.log10(np.maximum(cr["inter_turn_gap_s"], 1e-3)),
    )
    components = {
        "turns.ks": _ks(cs["turns"], cr["turns"]),
        "turns.wasserstein": _wasserstein(cs["turns"], cr["turns"]),
        "inter_turn_gap.ks": _ks(gs, gr),
        "inter_turn_gap.wasserstein_log10": _wasserstein(gs, gr),
        "follow_up_share": abs(cs["follow_up_share"] - cr["follow_up_share"])
        if len(synthetic) and len(real)
        else None,
    }
    stats = {
        "conversations": {"synthetic": len(cs["turns"]), "real": len(cr["turns"])},
        "mean_turns": {"synthetic": _mean(cs["turns"]), "real": _mean(cr["turns"])},
        "median_inter_turn_gap_s": {
            "synthetic": _median(cs["inter_turn_gap_s"]),
            "real": _median(cr["inter_turn_gap_s"]),
        },
        "follow_up_share": {"synthetic": cs["follow_up_share"], "real": cr["follow_up_share"]},
    }
    plot = {
        "turns": {"synthetic": cs["turns"], "real": cr["turns"]},
        "inter_turn_gap_s": {"synthetic": cs["inter_turn_gap_s"], "real": cr["inter_turn_gap_s"]},
    }
    return _result(components, ["turns.ks", "inter_turn_gap.ks", "follow_up_share"], stats, plot)


def _median(x: np.ndarray) -> float | None:
    return float(np.median(x)) if len(x) else None


# ---------------------------------------------------------------- client heterogeneity


def client_heterogeneity(
    synthetic: pd.DataFrame,
    real: pd.DataFrame,
    cv_window_s: float = CLIENT_CV_WINDOW_S,
    min_gaps: int = CLIENT_MIN_GAPS,
    top_ks=(1, 5, 10),
) -> dict:
    """Traffic-weighted Wasserstein of log10 client rate and of log client CV; |difference| of top-k shares."""
    ss = client_summary(synthetic, cv_window_s, min_gaps)
    sr = client_summary(real, cv_window_s, min_gaps)
    if len(ss) < 2 or len(sr) < 2:
        where = [n for n, s in (("synthetic", ss), ("real", sr)) if len(s) < 2]
        return _absent(f"fewer than 2 clients in the {' and '.join(where)} trace")
    top_s, top_r = top_share(ss["requests"], top_ks), top_share(sr["requests"], top_ks)
    cvs, cvr = ss.dropna(subset=["cv"]), sr.dropna(subset=["cv"])
    components = {
        "rate.wasserstein_log10": _wasserstein(
            np.log10(ss["rate_rps"]), np.log10(sr["rate_rps"]), ss["requests"], sr["requests"]
        ),
        "cv.wasserstein_log": _wasserstein(
            _log_cv(cvs["cv"]), _log_cv(cvr["cv"]), cvs["requests"], cvr["requests"]
        ),
        **{f"{k}_share": abs(top_s[k] - top_r[k]) for k in top_s},
    }
    stats = {
        "clients": {"synthetic": len(ss), "real": len(sr)},
        **{f"{k}_share": {"synthetic": top_s[k], "real": top_r[k]} for k in top_s},
    }
    plot = {"clients": {"synthetic": ss, "real": sr}}
    return _result(components, list(components), stats, plot)


def _client_medians(trace: pd.DataFrame, column: str) -> pd.Series:
    """Client id -> median of ``column`` over the client's requests."""
    return trace.groupby(trace["client_id"].astype(str), sort=False)[column].median()


def client_population(
    synthetic: pd.DataFrame,
    real: pd.DataFrame,
    cv_window_s: float = CLIENT_CV_WINDOW_S,
    min_gaps: int = CLIENT_MIN_GAPS,
) -> dict:
    """Per-client distributions with every client counting once (unlike client heterogeneity).

    Wasserstein distances between the two traces' clients of log10 rate, log
    CV and log10 median input/output tokens. This is what ``clients=new:N``
    must get right: N new clients should look like N real clients picked at
    random (most small, a few heavy), so their total traffic is realistic.
    """
    ss = client_summary(synthetic, cv_window_s, min_gaps)
    sr = client_summary(real, cv_window_s, min_gaps)
    if len(ss) < 2 or len(sr) < 2:
        where = [n for n, s in (("synthetic", ss), ("real", sr)) if len(s) < 2]
        return _absent(f"fewer than 2 clients in the {' and '.join(where)} trace")
    components = {
        "rate.wasserstein_log10": _wasserstein(np.log10(ss["rate_rps"]), np.log10(sr["rate_rps"])),
        "cv.wasserstein_log": _wasserstein(_log_cv(ss["cv"]), _log_cv(sr["cv"])),
    }
    stats = {
        "clients": {"synthetic": len(ss), "real": len(sr)},
        "total_rate_rps": {"synthetic": float(ss["rate_rps"].sum()), "real": float(sr["rate_rps"].sum())},
        "median_client_rate_rps": {
            "synthetic": float(ss["rate_rps"].median()),
            "real": float(sr["rate_rps"].median()),
        },
    }
    for column in ("input_tokens", "output_tokens"):
        if column in synthetic.columns and column in real.columns:
            ms, mr = _client_medians(synthetic, column), _client_medians(real, column)
            name = column.split("_")[0]
            components[f"{name}_median.wasserstein_log10"] = _wasserstein(
                np.log10(np.maximum(ms.to_numpy(np.float64), 1.0)),
                np.log10(np.maximum(mr.to_numpy(np.float64), 1.0)),
            )
    return _result(components, list(components), stats, {})


# ---------------------------------------------------------------- M9 calibration


def client_bin_counts(trace: pd.DataFrame, bin_s: float, n_bins: int) -> tuple[np.ndarray, pd.Index]:
    """(clients, n_bins) request counts per client in bins of ``bin_s`` from the trace's first request."""
    t = trace["timestamp"].to_numpy(np.float64)
    codes, ids = pd.factorize(trace["client_id"].astype(str), sort=True)
    b = np.floor((t - t.min()) / bin_s).astype(np.int64) if len(t) else np.zeros(0, np.int64)
    inside = b < n_bins
    counts = np.bincount(codes[inside] * n_bins + b[inside], minlength=len(ids) * n_bins)
    return counts.reshape(len(ids), n_bins).astype(np.float64), pd.Index(ids)


def m9_calibration(synthetic: pd.DataFrame, real: pd.DataFrame, bin_s: float = CALIBRATION_BIN_S) -> dict:
    """Traffic per client and hour against the real trace's: is the generator's natural rate right?

    Both traces are cut into bins of ``bin_s`` (an hour) from their first
    request, as many bins as the shorter trace spans (a last bin counts when
    it is 98 % covered; one bin of the common span when that is shorter than
    ``bin_s``); requests after the last bin are not counted. Components: the median over (client, bin) cells where
    either trace has requests of |log((n_syn + 1) / (n_real + 1))|, clients
    matched by id (the headline; absent when no id is shared, e.g.
    ``clients=new:N``), and the median over bins of |log(total_syn /
    total_real)|. ``stats`` has the aggregate ratio (all counted synthetic
    requests / real ones).
    """
    ts, tr = _timestamps(synthetic), _timestamps(real)
    if len(ts) < 2 or len(tr) < 2:
        return _absent("fewer than 2 requests in one of the traces")
    common = min(ts[-1] - ts[0], tr[-1] - tr[0])
    if common <= 0:
        return _absent("one of the traces spans no time")
    width = min(bin_s, common)
    # A trace of whole hours spans a little less than them (first and last request inside).
    n_bins = max(1, int(np.floor(common / width + BIN_COVER_SLACK)))
    cs, ids_s = client_bin_counts(synthetic, width, n_bins)
    cr, ids_r = client_bin_counts(real, width, n_bins)
    total_s, total_r = cs.sum(0), cr.sum(0)
    hour = np.abs(np.log(np.maximum(total_s, 0.5) / np.maximum(total_r, 0.5)))
    shared = ids_s.intersection(ids_r)
    cell = None
    if len(shared):
        a, b = cs[ids_s.get_indexer(shared)], cr[ids_r.get_indexer(shared)]
        # Clients only one trace has count against zeros in the other.
        only_s, only_r = cs[~ids_s.isin(shared)], cr[~ids_r.isin(shared)]
        a = np.concatenate([a, only_s, np.zeros_like(only_r)])
        b = np.concatenate([b, np.zeros_like(only_s), only_r])
        busy = (a > 0) | (b > 0)
        cell = float(np.median(np.abs(np.log((a[busy] + 1.0) / (b[busy] + 1.0)))))
    components = {
        "client_bin.median_abs_log_ratio": cell,
        "bin.median_abs_log_ratio": float(np.median(hour)),
    }
    stats = {
        "bin_s": float(width),
        "bins": n_bins,
        "aggregate_ratio": float(total_s.sum() / max(total_r.sum(), 1.0)),
        "shared_clients": len(shared),
        "requests_per_bin": {"synthetic": total_s.tolist(), "real": total_r.tolist()},
    }
    # Headline: the per-client cells only, so a workload without matching clients is absent rather
    # than compared on the hourly totals alone against a floor that also has the cells.
    return _result(components, ["client_bin.median_abs_log_ratio"], stats, {})


# ---------------------------------------------------------------- all, noise floor

METRICS: dict[str, Callable[[pd.DataFrame, pd.DataFrame], dict]] = {
    "M2_burstiness": m2_burstiness,
    "M3_marginals": m3_marginals,
    "M4_dependence": m4_dependence,
    "M5_rate_dynamics": m5_rate_dynamics,
    "M6_token_load": m6_token_load,
    "M8_conversations": m8_conversations,
    "M9_calibration": m9_calibration,
    "client_heterogeneity": client_heterogeneity,
    "client_population": client_population,
}


def compute_all(synthetic: pd.DataFrame, real: pd.DataFrame) -> dict[str, dict]:
    """Every two-trace metric (M2-M6, M8, M9, client heterogeneity and population) of ``synthetic`` against ``real``."""
    return {name: fn(synthetic, real) for name, fn in METRICS.items()}


def noise_floor(reference: pd.DataFrame, test: pd.DataFrame) -> dict[str, dict]:
    """Every metric of the real ``reference`` against the real ``test`` trace, M4's raised to its
    sampling error (:func:`m4_floor`, bootstrap seeded with FLOOR_SEED: the same floor every run)."""
    rng = np.random.default_rng(FLOOR_SEED)
    return {
        name: m4_floor(reference, test, rng) if fn is m4_dependence else fn(reference, test)
        for name, fn in METRICS.items()
    }


def noise_floor_ratio(
    d_synthetic: float | None, d_floor: float | None, eps: float = NOISE_FLOOR_EPS
) -> float | None:
    """(d_syn + eps) / (d_floor + eps): 1.0 means as close to the real test trace as real traffic is.

    ``eps`` treats distances below it as indistinguishable, so a zero floor
    (two real segments that agree exactly on a statistic) gives a large but
    finite ratio instead of a division by zero, and 0/0 gives 1.0. ``None``
    when either distance is absent.
    """
    if d_synthetic is None or d_floor is None:
        return None
    return (float(d_synthetic) + eps) / (float(d_floor) + eps)


def ratios(synthetic_results: dict, floor_results: dict, eps: float = NOISE_FLOOR_EPS) -> dict:
    """Noise-floor ratio of every metric's distance and components (results of :func:`compute_all`)."""
    out = {}
    for name, res in synthetic_results.items():
        floor = floor_results.get(name, {})
        out[name] = {
            "distance": noise_floor_ratio(res.get("distance"), floor.get("distance"), eps),
            "components": {
                c: noise_floor_ratio(v, floor.get("components", {}).get(c), eps)
                for c, v in res.get("components", {}).items()
            },
        }
    return out


def jsonable(results: dict) -> dict:
    """``results`` without the ``plot`` arrays, with numpy scalars as Python numbers and NaN as None."""

    def clean(v):
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items() if k != "plot"}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.integer,)):
            return int(v)
        if isinstance(v, (float, np.floating)):
            return None if math.isnan(v) else float(v)
        return v

    return clean(results)
