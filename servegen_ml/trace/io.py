"""Reading and writing traces: format detection, chunked validated reading, atomic writing.

``read_trace`` returns a whole validated, sorted canonical trace;
``iter_trace_chunks`` streams one with bounded memory (each chunk validated
and sorted; rows are not reordered across chunks, see :class:`TraceReader`);
``write_trace`` writes one atomically. Formats: ``native``, ``mooncake``,
``azure``, ``burstgpt``, ``bailian`` (adapters in
:mod:`servegen_ml.trace.adapters`, mappings in their docstrings). A
``servegen`` client-pool directory is recognized here but sampled, not read:
:func:`servegen_ml.pool.read_source` reads either. ``format="auto"`` picks the
adapter from the columns of the file (CSV header, first JSON record, Parquet
schema); the container (CSV, JSON Lines, Parquet) comes from the extension or
the first bytes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from servegen_ml.core.errors import InputNotFoundError, UserError
from servegen_ml.trace.adapters import ADAPTERS, FORMATS
from servegen_ml.trace.readers import container_of, peek_columns, read_chunks
from servegen_ml.trace.schema import empty_trace
from servegen_ml.trace.validate import DEFAULT_MAX_TOKENS, TraceValidator, ValidationReport
from servegen_ml.trace.writers import TraceWriter, write_trace

__all__ = ["TraceReader", "TraceWriter", "detect_format", "iter_trace_chunks", "read_trace", "write_trace"]

DEFAULT_CHUNK_ROWS = 1_000_000
POOL_SAMPLED = "a ServeGen pool is sampled, not read: use servegen_ml.pool.read_source"


def is_pool_directory(path: Path) -> bool:
    """A ServeGen client-pool directory (``chunk-N-trace.csv`` + ``chunk-N-dataset.json``)."""
    return path.is_dir() and any(path.glob("chunk-*-trace.csv"))


def detect_format(path: str | Path) -> str:
    """The adapter name for a file (or 'servegen' for a pool directory)."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        if is_pool_directory(path):
            return "servegen"
        raise UserError(f"{path}: a directory, but not a ServeGen client pool (no chunk-*-trace.csv)")
    columns = set(peek_columns(path, container_of(path)))
    for name, adapter in ADAPTERS.items():
        if adapter.matches(columns):
            return name
    raise UserError(
        f"{path}: cannot tell the trace format from its columns {sorted(columns)}{_closest(columns)}; "
        f"pass format= (data.format=) one of {', '.join(FORMATS)}"
    )


def _closest(columns: set) -> str:
    """', closest: FORMAT, which also needs COLUMNS' for the format missing the fewest required columns."""
    missing = {
        name: [c for c in adapter.required_source_columns() if c not in columns]
        for name, adapter in ADAPTERS.items()
    }
    name = min(missing, key=lambda n: len(missing[n]))
    if not missing[name] or len(missing[name]) >= len(ADAPTERS[name].required_source_columns()):
        return ""
    return f" (closest: {name}, which also needs column(s) {', '.join(missing[name])})"


def resolve_format(path: Path, format: str) -> str:
    if format == "auto":
        return detect_format(path)
    if format not in FORMATS:
        raise UserError(f"unknown trace format {format!r}; use auto or one of {', '.join(FORMATS)}")
    if not path.exists():
        raise InputNotFoundError(f"{path}: no such file or directory")
    return format


class TraceReader:
    """Streams a trace file as validated canonical chunks; keeps the validation report.

    Each chunk is sorted by time; a file whose rows go back in time across a
    chunk boundary sets ``report.globally_unsorted`` (``read_trace`` then sorts
    the whole trace; streaming consumers must decide, see the ``convert``
    command). ``collect=True`` gathers problems of the whole file and raises
    them from :meth:`finish` (used by ``validate``).
    """

    def __init__(
        self,
        path: str | Path,
        format: str = "auto",
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        skip_bad_rows: bool = False,
        collect: bool = False,
        **adapter_options,
    ):
        self.path = Path(path)
        max_tokens = adapter_options.pop("max_tokens", None)
        self.format = resolve_format(self.path, format)
        if self.format == "servegen":
            raise UserError(f"{self.path}: {POOL_SAMPLED}")
        self.container = container_of(self.path)
        self.chunk_rows = int(chunk_rows)
        self.skip_bad_rows = skip_bad_rows
        self.collect = collect
        self.adapter_options = adapter_options
        self.max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else float(max_tokens)
        self.adapter = ADAPTERS[self.format](str(self.path), **adapter_options)
        self.validator = self._validator(skip_bad_rows, collect)

    def _validator(self, skip_bad_rows: bool, collect: bool, known_duplicates=None) -> TraceValidator:
        return TraceValidator(
            str(self.path),
            skip_bad_rows,
            column_labels=self.adapter.column_labels,
            extra_rules=self.adapter.extra_rules,
            required=tuple(self.adapter.required),
            row_label="line" if self.container == "jsonl" else "row",
            collect=collect,
            unique_column=self.adapter.unique_column,
            max_tokens=self.max_tokens,
            known_duplicates=known_duplicates,
        )

    def _cross_chunk_duplicates(self) -> np.ndarray | None:
        """skip_bad_rows: a first pass over the file for the rows whose id an earlier chunk has (None if
        the file is one chunk: then the chunk's own check finds every duplicate)."""
        scan = self._validator(skip_bad_rows=False, collect=True)
        adapter = ADAPTERS[self.format](str(self.path), **self.adapter_options)
        chunks = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the second pass gives the same warnings
            for raw, row_numbers in read_chunks(
                self.path, self.container, self.chunk_rows, adapter.string_columns
            ):
                mapped, problems = adapter.map_chunk(raw, row_numbers)
                scan.check(mapped, row_numbers, problems, raw)
                chunks += 1
        return scan.cross_chunk_duplicates()[0] if chunks > 1 else None

    @property
    def report(self) -> ValidationReport:
        return self.validator.report

    def __iter__(self) -> Iterator[pd.DataFrame]:
        if self.skip_bad_rows and self._has_ids():
            known = self._cross_chunk_duplicates()
            if known is not None:
                self.validator = self._validator(self.skip_bad_rows, self.collect, known)
        chunks = read_chunks(self.path, self.container, self.chunk_rows, self.adapter.string_columns)
        seen = False
        for raw, row_numbers in chunks:
            seen = True
            mapped, problems = self.adapter.map_chunk(raw, row_numbers)
            valid, _ = self.validator.check(mapped, row_numbers, problems, raw)
            yield self.adapter.finish_chunk(valid)
        if not seen:
            # A file with a header (or schema) and no rows: its columns are still checked.
            raw = pd.DataFrame(
                {c: pd.Series([], dtype=object) for c in peek_columns(self.path, self.container)}
            )
            mapped, problems = self.adapter.map_chunk(raw, np.zeros(0, dtype=np.int64))
            valid, _ = self.validator.check(mapped, np.zeros(0, dtype=np.int64), problems, raw)
            yield self.adapter.finish_chunk(valid)

    def _has_ids(self) -> bool:
        unique = self.adapter.unique_column
        columns = peek_columns(self.path, self.container)
        return unique in columns or self.adapter.column_labels.get(unique, unique) in columns

    def finish(self) -> ValidationReport:
        return self.validator.finish()


def iter_trace_chunks(
    path: str | Path,
    format: str = "auto",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    skip_bad_rows: bool = False,
    **adapter_options,
) -> Iterator[pd.DataFrame]:
    """Validated canonical chunks of a trace file, each sorted by time (see :class:`TraceReader`)."""
    reader = TraceReader(path, format, chunk_rows, skip_bad_rows, **adapter_options)
    yield from reader
    reader.finish()


def read_trace(
    path: str | Path,
    format: str = "auto",
    skip_bad_rows: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    **adapter_options,
) -> pd.DataFrame:
    """The whole trace, validated and sorted by time (stable).

    With ``skip_bad_rows`` the dropped rows are reported in a warning. A
    ServeGen pool is sampled by :func:`servegen_ml.pool.read_source` instead.
    """
    path = Path(path)
    fmt = resolve_format(path, format)
    reader = TraceReader(path, fmt, chunk_rows, skip_bad_rows, **adapter_options)
    chunks = list(reader)
    report = reader.finish()
    trace = (
        pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0] if chunks else empty_trace()
    )
    if report.globally_unsorted:
        warnings.warn(
            f"{path}: rows are not in timestamp order across the file; sorted by timestamp (stable)",
            stacklevel=2,
        )
        trace = trace.iloc[np.argsort(trace["timestamp"].to_numpy(), kind="stable")].reset_index(drop=True)
    if report.rows_dropped:
        warnings.warn(report.describe(), stacklevel=2)
    return trace
