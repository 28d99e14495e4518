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
from servegen_ml.core.interrupt import raise_if_interrupted
from servegen_ml.core.outputs import check_free_space, check_output_file
from servegen_ml.core.version import __version__
from servegen_ml.export.formats import FORMATS
from servegen_ml.trace.schema import REQUIRED_COLUMNS

__all__ = ["FORMATS", "WorkloadWriter", "export_trace", "meta_path"]


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
        _write_sidecar(meta_tmp, path, format, len(trace), start_offset_s, meta, format_meta)
    return path


class WorkloadWriter:
    """A workload written chunk by chunk: ``with WorkloadWriter(path, format, meta) as w: w.write(chunk, continues)``.

    Chunks are consecutive pieces of one trace in output order (as
    :meth:`~servegen_ml.generators.base.Generator.generate_blocks` yields
    them); the first request is moved to 0 s. The file and its sidecar appear
    together when the block ends without an error; the bytes are those
    :func:`export_trace` writes for the whole trace.
    """

    def __init__(self, path: str | Path, format: str = "native", meta: dict | None = None):
        if format not in FORMATS:
            raise UserError(f"format={format!r}: choose one of {', '.join(FORMATS)}")
        self.path = check_output_file(path)
        self.format = format
        self.meta = meta
        self.start_offset_s: float | None = None
        self.last_s: float | None = None
        self.clients: set[str] = set()

    def __enter__(self) -> WorkloadWriter:
        self._paths = atomic_paths(self.path, meta_path(self.path))
        self._data_tmp, self._meta_tmp = self._paths.__enter__()
        try:
            self._writer = FORMATS[self.format].writer(self._data_tmp)
        except BaseException as e:
            self._paths.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    @property
    def rows(self) -> int:
        return self._writer.rows

    def write(self, df: pd.DataFrame, continues: np.ndarray | None = None) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise UserError(f"cannot export: the trace has no {', '.join(missing)} column(s)")
        if len(df) == 0 and self.rows:
            return
        ts = df["timestamp"].to_numpy(dtype=np.float64)
        if self.start_offset_s is None and len(df):
            self.start_offset_s = float(ts[0])
        shift = self.start_offset_s or 0.0
        self._writer.write(df.assign(timestamp=ts - shift), continues)
        if len(df):
            self.last_s = float(ts[-1])
            self.clients.update(df["client_id"].astype(str).unique())

    def __exit__(self, *exc) -> bool:
        try:
            if exc[0] is None:
                raise_if_interrupted()  # never commit a run whose SIGTERM was swallowed
                format_meta = self._writer.close()
                _write_sidecar(
                    self._meta_tmp,
                    self.path,
                    self.format,
                    self.rows,
                    self.start_offset_s or 0.0,
                    self.meta,
                    format_meta,
                )
            else:
                self._writer.abort()
        except BaseException as e:
            self._paths.__exit__(type(e), e, e.__traceback__)
            raise
        return bool(self._paths.__exit__(*exc))


def estimated_bytes(df: pd.DataFrame, format: str) -> float:
    """A rough upper estimate of the file's size: a row's fields plus, for block formats, its block ids."""
    size = 100.0 * len(df)
    block_tokens = getattr(FORMATS[format], "block_tokens", None)
    if block_tokens:
        tokens = df["input_tokens"].to_numpy(dtype=np.float64)
        size += float(np.ceil(tokens / block_tokens).sum()) * 12  # digits, comma, space per id
    return size


def _write_sidecar(
    target: Path, path: Path, format: str, rows: int, start_offset_s: float, meta, format_meta
) -> None:
    sidecar = {
        **(meta or {}),
        "format": format,
        "file": path.name,
        "used_by": FORMATS[format].used_by,
        "rows": rows,
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
