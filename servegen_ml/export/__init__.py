"""Exports for load generators and simulators (docs/exports.md), each with a ``<file>.meta.json`` sidecar.

``export_trace(df, path, format)`` sorts the trace by arrival (stable), moves
its first request to 0 s, writes the file atomically in the chosen format and
then the sidecar: the caller's ``meta`` (the generate command passes the spec,
seed and checkpoint digest) plus the format, field units, package version, row
count and the time shift that was applied.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from servegen_ml.core.atomic import write_text
from servegen_ml.core.version import __version__
from servegen_ml.export.formats import FORMATS
from servegen_ml.trace.schema import REQUIRED_COLUMNS

__all__ = ["FORMATS", "export_trace", "meta_path"]


def meta_path(path: str | Path) -> Path:
    """The sidecar of an exported file: ``<path>.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def export_trace(
    df: pd.DataFrame, path: str | Path, format: str = "native", meta: dict | None = None
) -> Path:
    """Write ``df`` (a canonical trace) to ``path`` in ``format``; returns ``path``."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: choose one of {', '.join(FORMATS)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"cannot export: the trace has no {', '.join(missing)} column(s)")
    path = Path(path)
    trace, start_offset_s = _from_zero(df)
    format_meta = FORMATS[format].write(trace, path)
    sidecar = {
        **(meta or {}),
        "format": format,
        "file": path.name,
        "used_by": FORMATS[format].used_by,
        "rows": len(trace),
        "sorted_by": "arrival time, ascending (ties: turn, then input order)",
        "time_origin": "the first request is at 0",
        "start_offset_s": start_offset_s,
        "package": "servegen-ml",
        "package_version": __version__,
        **format_meta,
    }
    write_text(meta_path(path), json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _from_zero(df: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Sorted by arrival with the first request at 0 s, and the shift that was subtracted (s)."""
    ts = df["timestamp"].to_numpy(dtype=np.float64)
    if not np.isfinite(ts).all():
        raise ValueError(
            f"cannot export: timestamp has {int((~np.isfinite(ts)).sum())} missing or infinite value(s)"
        )
    # Ties in time keep turn order, so a follow-up never precedes its predecessor in the file.
    keys = (df["turn"].to_numpy(dtype=np.int64), ts) if "turn" in df.columns else (ts,)
    order = np.lexsort(keys)
    trace = df.iloc[order].reset_index(drop=True)
    start_s = float(ts.min()) if len(ts) else 0.0
    trace = trace.assign(timestamp=trace["timestamp"].to_numpy(dtype=np.float64) - start_s)
    return trace, start_s
