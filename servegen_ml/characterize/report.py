"""The Markdown report and the JSON form of a characterization."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def jsonable(value):
    """Stats with numpy scalars as Python numbers, NaN/inf as None, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is pd.NA:
        return None
    return value


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1000):
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.1f}"
    return f"{v:.{digits}g}"


def _pct(v) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.1%}"


def _duration(s: float) -> str:
    if s >= 2 * 86400:
        return f"{s / 86400:.1f} days"
    if s >= 2 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.1f} min"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def _figure(figures: dict, name: str) -> list[str]:
    return [f"![{figures[name]}]({name})", ""] if name in figures else []


def render(stats: dict, figures: dict[str, str]) -> str:
    t = stats["trace"]
    lines = [f"# Workload characterization: `{t['source']}`", ""]
    lines += _table(
        ["requests", "span", "mean rate", "clients", "columns"],
        [
            [
                f"{t['requests']:,}",
                _duration(t["span_s"]),
                f"{_num(t['mean_rate_rps'])} req/s",
                f"{t['clients']:,}",
                ", ".join(f"`{c}`" for c in t["columns"]),
            ]
        ],
    )
    lines += [
        "Sections appear only for what the trace has. Time of day is `timestamp mod 86400` "
        "(UTC for epoch timestamps, time since the start of day 0 for relative ones). "
        "What is exact and what is sampled is listed under `method` in `stats.json`.",
        "",
    ]
    lines += _arrivals(stats, figures) + _lengths(stats, figures) + _clients(stats, figures)
    lines += _multimodal(stats, figures) + _reasoning(stats, figures) + _conversations(stats, figures)
    return "\n".join(lines).rstrip() + "\n"


def _arrivals(stats: dict, figures: dict) -> list[str]:
    a = stats["arrivals"]
    ia, wcv = a["inter_arrival"], a["window_cv"]
    lines = ["## Arrivals", ""]
    lines += _table(
        [
            "mean rate",
            "inter-arrival CV (all gaps)",
            "zero gaps (ties)",
            f"CV per {a['cv_window_s']:g} s window: p10 / p50 / p90",
        ],
        [
            [
                f"{_num(a['mean_rate_rps'])} req/s",
                _num(ia["cv"]),
                _pct(ia["fits"]["zero_share"]),
                " / ".join(_num(wcv.get(k)) for k in ("p10", "p50", "p90")),
            ]
        ],
    )
    lines += _figure(figures, "arrivals_rate_cv.png") + _figure(figures, "arrivals_daily_weekly.png")
    fits = ia["fits"]
    if fits.get("best"):
        sampled = " (on a uniform sample of the gaps)" if fits.get("sampled") else ""
        lines += [
            f"Inter-arrival fits on {fits['fitted']:,} positive gaps{sampled}; best by AIC: **{fits['best']}**.",
            "",
        ]
        rows = [
            [
                name,
                ", ".join(f"{k} {_num(v, 4)}" for k, v in f["params"].items()),
                _num(f["loglik"], 6),
                _num(f["aic"], 6),
                _num(f["ks_statistic"]),
            ]
            if "params" in f
            else [name, f"fit failed: {f['error']}"] + ["–"] * 3
            for name, f in fits["families"].items()
        ]
        lines += _table(["family", "parameters", "log-likelihood", "AIC", "KS statistic"], rows)
        if fits.get("note"):
            lines += [f"Caution: {fits['note']}.", ""]
    elif fits.get("note"):
        lines += [f"No inter-arrival fit: {fits['note']}.", ""]
    lines += _figure(figures, "arrivals_fits.png")
    disp = {k: v for k, v in a["dispersion"].items() if v is not None and math.isfinite(v)}
    if disp:
        lines += ["Index of dispersion (var/mean of counts per window; 1 = Poisson):", ""]
        lines += _table([f"{k} s" for k in disp], [[_num(v) for v in disp.values()]])
    lines += _figure(figures, "arrivals_dispersion.png")
    return lines


def _lengths(stats: dict, figures: dict) -> list[str]:
    lg = stats["lengths"]
    rows = [
        [name.replace("_", " ")]
        + [_num(lg[name].get(k)) for k in ("mean", "p50", "p90", "p99", "p999", "max")]
        for name in ("input_tokens", "output_tokens")
    ]
    lines = ["## Lengths", ""]
    lines += _table(["tokens", "mean", "p50", "p90", "p99", "p99.9", "max"], rows)
    lines += [
        f"Spearman correlation of input and output tokens: {_num(lg['spearman_input_output_sampled'])} "
        "(on a uniform sample of requests).",
        "",
    ]
    return lines + _figure(figures, "lengths.png") + _figure(figures, "lengths_by_hour.png")


def _clients(stats: dict, figures: dict) -> list[str]:
    if "clients" not in stats:
        return []
    c = stats["clients"]
    share = c["top_share"]
    lines = ["## Clients", ""]
    lines += [
        f"{c['clients']:,} clients. The largest sends {_pct(share['top1'])} of requests, the top 5 "
        f"{_pct(share['top5'])}, the top 10 {_pct(share['top10'])}. Traffic-weighted median client rate "
        f"{_num(c['rate_rps_weighted'].get('p50'))} req/s; traffic-weighted median client CV "
        f"{_num(c['cv_weighted'].get('p50'))} (mean of per-window CVs).",
        "",
    ]
    rows = [
        [
            f"`{r['client_id']}`",
            f"{r['requests']:,}",
            _pct(r["share"]),
            _num(r["rate_rps"]),
            _num(r["cv"]),
            _num(r["cv_overall"]),
            _num(r["mean_input"]),
            _num(r["mean_output"]),
        ]
        for r in c["largest"]
    ]
    lines += _table(
        [
            "client",
            "requests",
            "share",
            "rate (req/s)",
            "CV (per window)",
            "CV (all gaps)",
            "mean input",
            "mean output",
        ],
        rows,
    )
    return lines + _figure(figures, "clients.png") + _figure(figures, "clients_largest.png")


def _multimodal(stats: dict, figures: dict) -> list[str]:
    if "multimodal" not in stats:
        return []
    m = stats["multimodal"]
    rows = [
        [
            name,
            _pct(s["share_of_requests_with_items"]),
            _num(s["items_per_request"].get("mean")),
            _num(s["items_per_request"].get("max")),
            _num(s["tokens_per_item"].get("mean")),
            _num(s["tokens_per_item"].get("p50")),
            _num(s["tokens_per_item"].get("p99")),
        ]
        for name, s in m["modalities"].items()
    ]
    tv = m["text_vs_media"]
    lines = ["## Multimodal", ""]
    lines += _table(
        [
            "modality",
            "requests with items",
            "items/request (mean)",
            "items/request (max)",
            "tokens/item (mean)",
            "tokens/item (p50)",
            "tokens/item (p99)",
        ],
        rows,
    )
    lines += [
        f"Text vs media tokens per request: Pearson on log1p {_num(tv['pearson_log1p'])}, Spearman "
        f"{_num(tv['spearman_sampled'])} (sample of {tv['sample_size']:,}).",
        "",
    ]
    return lines + _figure(figures, "multimodal.png")


def _reasoning(stats: dict, figures: dict) -> list[str]:
    if "reasoning" not in stats:
        return []
    r = stats["reasoning"]
    ratio = r["ratio"]
    verdict = {True: "bimodal", False: "not bimodal", None: "undetermined"}[r["bimodal"]]
    lines = ["## Reasoning", ""]
    lines += _table(
        ["ratio mean", "p10 / p50 / p90", "at 0", "below 0.1", "above 0.9", "bimodality coefficient"],
        [
            [
                _num(ratio.get("mean")),
                " / ".join(_num(ratio.get(k)) for k in ("p10", "p50", "p90")),
                _pct(ratio.get("share_zero")),
                _pct(ratio.get("share_below_0.1")),
                _pct(ratio.get("share_above_0.9")),
                f"{_num(ratio.get('bimodality_coefficient'))} ({verdict})",
            ]
        ],
    )
    lines += [
        f"Reasoning tokens: mean {_num(r['reasoning_tokens'].get('mean'))}, p99 "
        f"{_num(r['reasoning_tokens'].get('p99'))}; answer tokens: mean {_num(r['answer_tokens'].get('mean'))}, "
        f"p99 {_num(r['answer_tokens'].get('p99'))}. Spearman (reasoning, answer) "
        f"{_num(r['spearman_reasoning_answer_sampled'])}; (input, ratio) {_num(r['spearman_input_ratio_sampled'])}.",
        "",
    ]
    return lines + _figure(figures, "reasoning.png")


def _conversations(stats: dict, figures: dict) -> list[str]:
    if "conversations" not in stats:
        return []
    c = stats["conversations"]
    turns, gaps = c["turns_per_conversation"], c["inter_turn_gap_s"]
    lines = ["## Conversations", ""]
    lines += _table(
        [
            "conversations",
            "follow-up share",
            "turns: mean / p90 / max",
            "inter-turn gap (s): p50 / p90 / p99",
        ],
        [
            [
                f"{c['conversations']:,}",
                _pct(c["follow_up_share"]),
                " / ".join(_num(turns.get(k)) for k in ("mean", "p90", "max")),
                " / ".join(_num(gaps.get(k)) for k in ("p50", "p90", "p99")),
            ]
        ],
    )
    return lines + _figure(figures, "conversations.png")
