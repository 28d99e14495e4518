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

from servegen_ml.core.atomic import atomic_paths
from servegen_ml.core.errors import UserError
from servegen_ml.core.outputs import check_free_space, check_output_file
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
        raise UserError(f"format={format!r}: choose one of {', '.join(FORMATS)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"cannot export: the trace has no {', '.join(missing)} column(s)")
    path = check_output_file(path)
    check_free_space(path, estimated_bytes(df, format))
    trace, start_offset_s = _from_zero(df)
    # The file and its sidecar are replaced as one unit: never one run's data with another's sidecar.
    with atomic_paths(path, meta_path(path)) as (data_tmp, meta_tmp):
        format_meta = FORMATS[format].write(trace, data_tmp)
        _write_sidecar(meta_tmp, path, format, trace, start_offset_s, meta, format_meta)
    return path


def estimated_bytes(df: pd.DataFrame, format: str) -> float:
    """A rough upper estimate of the file's size: a row's fields plus, for block formats, its block ids."""
    size = 100.0 * len(df)
    block_tokens = getattr(FORMATS[format], "block_tokens", None)
    if block_tokens:
        tokens = df["input_tokens"].to_numpy(dtype=np.float64)
        size += float(np.ceil(tokens / block_tokens).sum()) * 12  # digits, comma, space per id
    return size


def _write_sidecar(
    target: Path, path: Path, format: str, trace: pd.DataFrame, start_offset_s: float, meta, format_meta
) -> None:
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
    target.write_text(json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n")


def _from_zero(df: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Sorted by arrival with the first request at 0 s, and the shift that was subtracted (s)."""
    ts = df["timestamp"].to_numpy(dtype=np.float64)
    if not np.isfinite(ts).all():
        raise UserError(
            f"cannot export: timestamp has {int((~np.isfinite(ts)).sum())} missing or infinite value(s)"
        )
    # Ties in time keep turn order, so a follow-up never precedes its predecessor in the file.
    keys = (df["turn"].to_numpy(dtype=np.int64), ts) if "turn" in df.columns else (ts,)
    order = np.lexsort(keys)
    trace = df.iloc[order].reset_index(drop=True)
    start_s = float(ts.min()) if len(ts) else 0.0
    trace = trace.assign(timestamp=trace["timestamp"].to_numpy(dtype=np.float64) - start_s)
    return trace, start_s
