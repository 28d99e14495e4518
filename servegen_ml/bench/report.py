"""Benchmark outputs: ``metrics.json``, ``report.md`` (Markdown tables) and the figures, written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

from servegen_ml.bench.compare import Comparison
from servegen_ml.bench.figures import write_figures
from servegen_ml.core.atomic import write_text

RATIO_NOTE = (
    "Ratio = (d(workload, real test) + 0.001) / (d(reference, real test) + 0.001): 1.0 means as close to the "
    "real test traffic as the real reference traffic is; lower is better. Headline distances are the mean of "
    "each metric's headline components (see metrics.json)."
)


def fmt(v, digits: int = 3) -> str:
    """A number for a table cell: 3 significant digits, '—' for absent."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}g}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def headline_tables(comp: Comparison) -> str:
    names = [w.name for w in comp.workloads]
    metric_names = list(comp.floor)
    ratio_rows = [[m] + [fmt(comp.ratios[n][m]["distance"]) for n in names] for m in metric_names]
    dist_rows = [
        [m, fmt(comp.floor[m].get("distance"))] + [fmt(comp.results[n][m].get("distance")) for n in names]
        for m in metric_names
    ]
    return "\n\n".join(
        [
            "## Ratio to the noise floor (headline distance)",
            RATIO_NOTE,
            table(["metric", *names], ratio_rows),
            absent_notes(comp),
            "## Distances",
            table(["metric", "noise floor d(reference, test)", *names], dist_rows),
        ]
    )


def absent_notes(comp: Comparison) -> str:
    """Why cells are '—': each absent metric with its reason and the workloads it applies to."""
    reasons: dict[tuple[str, str], list[str]] = {}
    sources = [("noise floor", comp.floor)] + [(w.name, comp.results[w.name]) for w in comp.workloads]
    for name, results in sources:
        for metric, res in results.items():
            if res.get("distance") is None:
                reasons.setdefault((metric, res.get("absent", "no data")), []).append(name)
    if not reasons:
        return "All metrics are present for every workload."
    lines = [
        f"- {metric} absent for {', '.join(names)}: {reason}" for (metric, reason), names in reasons.items()
    ]
    return "'—' marks an absent metric:\n\n" + "\n".join(lines)


def component_tables(comp: Comparison) -> str:
    names = [w.name for w in comp.workloads]
    parts = ["## Components (ratio to the noise floor; floor distance in the first column)"]
    for metric, floor in comp.floor.items():
        components = floor.get("components", {})
        if not components:
            parts.append(f"**{metric}**: absent ({floor.get('absent', 'no data')})")
            continue
        rows = [
            [c, fmt(d)] + [fmt(comp.ratios[n][metric]["components"].get(c)) for n in names]
            for c, d in components.items()
        ]
        parts += [f"**{metric}**", table(["component", "floor", *names], rows)]
    return "\n\n".join(parts)


def provisioning_table(comp: Comparison) -> str:
    p = comp.provisioning
    if p is None:
        return "## Provisioning (M7)\n\nNot run (provisioning.enabled=false)."
    entries = [
        (f"real test ({comp.test.name})", p["real_test"], "0 (by definition)"),
        (f"reference ({comp.reference.name})", p["reference"], None),
        *((n, v, None) for n, v in p["synthetic"].items()),
    ]
    rows = [
        [name, fmt(v["instances"]), error or fmt(v.get("under_provisioning_error")), _provisioning_note(v)]
        for name, v, error in entries
    ]
    slo = p["slo"]
    return "\n\n".join(
        [
            "## Provisioning (M7)",
            (
                f"SLO: {slo['rule']}. Serving model: Llama-3-8B on one A100-80GB per instance "
                f"(servegen_ml/bench/serving_model.py), speedup {p['serving_model']['speedup']:g}. "
                "Under-provisioning error = (needed_real - needed) / needed_real; positive = too few instances."
            ),
            table(["workload", "instances", "under-provisioning error", "note"], rows),
        ]
    )


def _provisioning_note(v: dict) -> str:
    if v["instances"] is not None:
        return ""
    return v.get("unreachable") or f"SLO not met with {max(map(int, v['tried']))} instances"


def describe_inputs(comp: Comparison) -> str:
    rows = []
    for role, w in [
        ("real test", comp.test),
        ("reference", comp.reference),
        *(("synthetic", w) for w in comp.workloads),
    ]:
        t = w.trace["timestamp"]
        span = float(t.max() - t.min()) if len(t) else 0.0
        source = w.info.get("path") or ", ".join(f"{k}={v}" for k, v in w.info.items() if k != "spec")
        rows.append(
            [role, w.name, str(len(w.trace)), f"{span:.0f}", str(w.trace["client_id"].nunique()), source]
        )
    return table(["role", "name", "requests", "span (s)", "clients", "source"], rows)


def write_outputs(
    comp: Comparison,
    directory: str | Path,
    title: str,
    plotted: list[str],
    extra_json: dict | None = None,
    extra_sections: list[str] | None = None,
    command: str | None = None,
) -> list[Path]:
    """metrics.json, report.md and the PNG figures into ``directory``; returns the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {**comp.to_json(), **(extra_json or {})}
    write_text(
        directory / "metrics.json", json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n"
    )
    figures = write_figures(comp, plotted, directory)
    sections = [f"# {title}"]
    if command:
        sections.append(f"Reproduce with:\n\n```\n{command}\n```")
    sections += [
        describe_inputs(comp),
        *(extra_sections or []),
        headline_tables(comp),
        provisioning_table(comp),
    ]
    sections.append("## Figures\n\n" + "\n\n".join(f"![{f}]({f})" for f in figures))
    sections.append(component_tables(comp))
    write_text(directory / "report.md", "\n\n".join(sections) + "\n")
    return [directory / "metrics.json", directory / "report.md", *(directory / f for f in figures)]
