"""Convert any supported trace file into a canonical trace file (ServeGen pools: :mod:`servegen_ml.pool.source`).

Files are streamed: each validated chunk is appended to the output's
temporary file, so memory stays bounded by the chunk size. Only a file whose
rows go back in time across a chunk boundary cannot be streamed: the partial
output is discarded, a warning says so, and the trace is read whole, sorted
(stably) and written in one go — memory then grows with the file. The output
appears only when everything succeeded (atomic rename).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from servegen_ml.trace.io import DEFAULT_CHUNK_ROWS, TraceReader, read_trace, resolve_format
from servegen_ml.trace.summary import TraceSummary
from servegen_ml.trace.validate import ValidationReport
from servegen_ml.trace.writers import TraceWriter, output_container, write_trace


class _NeedsGlobalSort(Exception):
    """Rows arrive out of order across chunks; streaming cannot write them sorted."""


def _window(chunk: pd.DataFrame, start_s: float | None, duration_s: float | None) -> pd.DataFrame:
    if start_s is None and duration_s is None:
        return chunk
    t = chunk["timestamp"].to_numpy()
    keep = t >= (start_s or -np.inf)
    if duration_s is not None:
        keep &= t < (start_s or 0.0) + duration_s
    return chunk[keep].reset_index(drop=True)


def convert_trace(
    path: str | Path,
    out: str | Path,
    format: str = "auto",
    skip_bad_rows: bool = False,
    start_s: float | None = None,
    duration_s: float | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    **adapter_options,
) -> tuple[dict, ValidationReport | None]:
    """Write ``path`` as a canonical trace at ``out``; returns (summary of what was written, report).

    ``start_s``/``duration_s`` keep only rows with ``start_s <= timestamp < start_s + duration_s``.
    """
    path, out = Path(path), Path(out)
    output_container(out)
    fmt = resolve_format(path, format)
    summary = TraceSummary()
    reader = TraceReader(path, fmt, chunk_rows, skip_bad_rows, **adapter_options)
    try:
        with TraceWriter(out) as writer:
            for chunk in reader:
                if reader.report.globally_unsorted:
                    raise _NeedsGlobalSort
                chunk = _window(chunk, start_s, duration_s)
                writer.write(chunk)
                summary.add(chunk)
            report = reader.finish()
        return summary.result(), report
    except _NeedsGlobalSort:
        warnings.warn(
            f"{path}: rows go back in time across chunks of {chunk_rows:,} rows; reading the whole trace "
            "into memory to sort it (stable)",
            stacklevel=2,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the same out-of-order and dropped-row warnings were given above
        trace = read_trace(path, fmt, skip_bad_rows, chunk_rows, **adapter_options)
    trace = _window(trace, start_s, duration_s)
    write_trace(trace, out)
    return TraceSummary().add(trace).result(), None
