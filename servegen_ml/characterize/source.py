"""Chunks of a trace for streaming statistics.

Uses ``servegen_ml.trace.io.iter_trace_chunks`` when it is available (every
format and adapter); otherwise reads canonical Parquet batch by batch with
pyarrow and validates each batch, which covers the native format.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from servegen_ml.core.errors import InputNotFoundError, UserError


def iter_chunks(
    path: str | Path,
    format: str = "auto",
    chunk_rows: int = 1_000_000,
    skip_bad_rows: bool = False,
    **reader_options,
) -> Iterator[pd.DataFrame]:
    """Validated canonical chunks of the trace at ``path``, in file order."""
    if Path(path).is_dir():
        raise UserError(
            f"{path}: a directory; characterize streams a trace file. Sample a ServeGen pool into one first: "
            f"servegen-ml convert data.path={path} start_s=0 duration_s=86400 out=trace.parquet"
        )
    try:
        from servegen_ml.trace.io import iter_trace_chunks
    except ImportError:
        return _parquet_chunks(Path(path), chunk_rows, skip_bad_rows)
    options = (
        {"skip_bad_rows": skip_bad_rows}
        if "skip_bad_rows" in inspect.signature(iter_trace_chunks).parameters
        else {}
    )
    return iter_trace_chunks(path, format=format, chunk_rows=chunk_rows, **options, **reader_options)


def _parquet_chunks(path: Path, chunk_rows: int, skip_bad_rows: bool) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from servegen_ml.trace.schema import from_arrow
    from servegen_ml.trace.validate import TraceValidator

    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such trace file")
    if path.suffix.lower() != ".parquet":
        raise UserError(
            f"{path}: only Parquet traces can be streamed until servegen_ml.trace.io is installed"
        )
    validator = TraceValidator(str(path), skip_bad_rows)
    for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=chunk_rows):
        chunk, _ = validator.check(from_arrow(pa.Table.from_batches([batch])))
        yield chunk
    validator.finish()
