"""Chunked reading of trace containers (CSV, JSON Lines, Parquet) with file row numbers.

Each reader yields ``(frame, row_numbers)``: a raw DataFrame with the file's
own column names and, for every row, its 1-based data row in the file (the
line number for JSON Lines), so validation errors point into the file.
Memory is bounded by the chunk size. A file that cannot be parsed (truncated,
corrupt, not the container its name says) raises :class:`TraceReadError`
naming the file; readers never return a partial trace silently, and the
consumers that write files do so atomically.

``.gz``, ``.bz2``, ``.zst`` and ``.xz`` suffixes on CSV and JSON Lines files
are decompressed on the fly.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Full, Queue

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from servegen_ml.core.errors import UserError
from servegen_ml.trace.schema import LIST_DTYPE, STRING_DTYPE

COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".xz")
CONTAINERS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class TraceReadError(UserError):
    """A trace file could not be parsed (truncated, corrupt or not the expected container)."""


def container_of(path: str | Path) -> str:
    """'csv', 'jsonl' or 'parquet', from the extension (after a compression suffix) or the first bytes."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in CONTAINERS:
        return CONTAINERS[suffixes[-1]]
    with _open_text_stream(path) as f:
        head = f.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    return "jsonl" if head.lstrip().startswith(b"{") else "csv"


def _open_text_stream(path: Path):
    if path.suffix.lower() in COMPRESSION_SUFFIXES:
        return io.BufferedReader(pa.input_stream(str(path), compression="detect"))
    return open(path, "rb")


def _read_error(path, container: str, error: Exception) -> TraceReadError:
    return TraceReadError(f"{path}: cannot read {container} file, it may be truncated or corrupt ({error})")


def peek_columns(path: str | Path, container: str) -> list[str]:
    """The column names of a file: CSV header, keys of the first JSON record, Parquet schema."""
    path = Path(path)
    try:
        if container == "parquet":
            return list(pq.read_schema(path).names)
        if container == "csv":
            return list(pd.read_csv(path, nrows=0).columns)
        with _open_text_stream(path) as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except ValueError as e:
                        raise TraceReadError(
                            f"{path}, line {line_no}: not valid JSON or not UTF-8 ({e})"
                        ) from e
                    if not isinstance(record, dict):
                        raise TraceReadError(f"{path}, line {line_no}: expected a JSON object")
                    return list(record)
        return []
    except TraceReadError:
        raise
    except (OSError, ValueError, pa.ArrowException, pd.errors.ParserError, EOFError) as e:
        raise _read_error(path, container, e) from e


def read_chunks(
    path: str | Path, container: str, chunk_rows: int, string_columns=()
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """Yield ``(raw frame, 1-based row numbers)`` chunks of about ``chunk_rows`` rows."""
    readers = {"csv": _csv_chunks, "jsonl": _jsonl_chunks, "parquet": _parquet_chunks}
    path = Path(path)
    try:
        yield from readers[container](path, chunk_rows, string_columns)
    except TraceReadError:
        raise
    except (OSError, ValueError, pa.ArrowException, pd.errors.ParserError, EOFError, UnicodeDecodeError) as e:
        raise _read_error(path, container, e) from e


def _csv_chunks(path: Path, chunk_rows: int, string_columns) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """Arrow's multi-threaded streaming parser; from the first block it cannot parse on, pandas'.

    Arrow is several times faster but stricter: a blank line, a short row, a
    quoted newline or a value of another type than the column's first block
    makes it stop. The rows it already delivered are good, so pandas (which
    reads those files with NaN-padding and per-chunk types, and whose errors
    name the problem) carries on from the next row.
    """
    delivered = 0
    try:
        for frame, row_numbers in _arrow_csv_chunks(path, chunk_rows, string_columns):
            yield frame, row_numbers
            delivered += len(frame)
        return
    except pa.ArrowInvalid:
        pass
    yield from _pandas_csv_chunks(path, chunk_rows, string_columns, delivered)


CSV_BLOCK_BYTES = 8 << 20


def _arrow_csv_reader(path: Path, string_columns, as_strings=()) -> pa_csv.CSVStreamingReader:
    header = peek_columns(path, "csv")
    if len(set(header)) != len(header):
        raise pa.ArrowInvalid("duplicate column names")  # pandas renames them; let it
    forced = {c: pa.string() for c in (*string_columns, *as_strings) if c in header}
    return pa_csv.open_csv(
        pa.input_stream(str(path), compression="detect"),
        read_options=pa_csv.ReadOptions(use_threads=True, block_size=CSV_BLOCK_BYTES),
        parse_options=pa_csv.ParseOptions(ignore_empty_lines=False),
        # Same missing values as the pandas path: only empty cells ("NA", "null" are strings).
        convert_options=pa_csv.ConvertOptions(
            column_types=forced, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True
        ),
    )


def _arrow_csv_chunks(
    path: Path, chunk_rows: int, string_columns
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    reader = _arrow_csv_reader(path, string_columns)
    # Date-like text stays text, as pandas reads it: adapters parse and validate it themselves.
    temporal = [f.name for f in reader.schema if pa.types.is_temporal(f.type)]
    if temporal:
        reader.close()
        reader = _arrow_csv_reader(path, string_columns, temporal)
    offset = 0
    with reader:
        # Parsing (Arrow, off the GIL) runs one chunk ahead of the caller's validation.
        for table in read_ahead(_rechunk(reader, chunk_rows)):
            frame = table.to_pandas(types_mapper=_arrow_types)
            yield frame, offset + 1 + np.arange(len(frame), dtype=np.int64)
            offset += len(frame)


def read_ahead(items: Iterator, depth: int = 1) -> Iterator:
    """``items`` produced by a background thread up to ``depth`` ahead of the consumer; errors re-raised in order.

    Worth it when producing releases the GIL (Arrow parsing, file reads). Stopping early
    (``close()`` of this generator) stops the producer after its current item.
    """
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put((item, None), timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put((done, None))
        except BaseException as error:  # handed to the consumer, raised there
            queue.put((done, error))

    thread = threading.Thread(target=produce, name="servegen-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = queue.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                queue.get(timeout=0.1)
            except Empty:
                pass
        thread.join()


def _rechunk(batches, rows: int) -> Iterator[pa.Table]:
    """Tables of exactly ``rows`` rows (the last may be shorter) from a stream of record batches."""
    pending, pending_rows = [], 0
    for batch in batches:
        pending.append(pa.Table.from_batches([batch]))
        pending_rows += batch.num_rows
        while pending_rows >= rows:
            table = pa.concat_tables(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
    if pending_rows:
        yield pa.concat_tables(pending)


def _pandas_csv_chunks(
    path: Path, chunk_rows: int, string_columns, skip_rows: int = 0
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    # Id columns stay strings ("007" must not become 7); only empty cells are missing values.
    reader = pd.read_csv(
        path,
        chunksize=chunk_rows,
        dtype={c: "str" for c in string_columns},
        keep_default_na=False,
        na_values=[""],
        skip_blank_lines=False,
        low_memory=False,
        skiprows=range(1, skip_rows + 1) if skip_rows else None,
    )
    offset = skip_rows
    with reader:
        for frame in reader:
            yield frame, offset + 1 + np.arange(len(frame), dtype=np.int64)
            offset += len(frame)


def open_parquet(path) -> pq.ParquetFile:
    """A ParquetFile for streaming: with Arrow's pre-buffering (its default) ``iter_batches`` keeps
    every row group's bytes it read until the file is closed (27 MB per 10^6 rows of a trace)."""
    return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)


def _parquet_chunks(path: Path, chunk_rows: int, string_columns) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    offset = 0
    with open_parquet(path) as pf:
        for batch in pf.iter_batches(batch_size=chunk_rows):
            frame = batch.to_pandas(types_mapper=_arrow_types)
            yield frame, offset + 1 + np.arange(len(frame), dtype=np.int64)
            offset += len(frame)


def _arrow_types(typ: pa.DataType):
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return LIST_DTYPE if pa.types.is_integer(typ.value_type) else pd.ArrowDtype(typ)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return STRING_DTYPE
    return None


def _jsonl_chunks(path: Path, chunk_rows: int, string_columns) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    first_line = 1
    with _open_text_stream(path) as f:
        while True:
            lines = list(itertools.islice(f, chunk_rows))
            if not lines:
                return
            blank = np.fromiter((not line.strip() for line in lines), dtype=bool, count=len(lines))
            line_numbers = first_line + np.flatnonzero(~blank)
            first_line += len(lines)
            if len(line_numbers):
                yield _parse_jsonl_block(path, lines, blank, line_numbers), line_numbers


def _parse_jsonl_block(
    path: Path, lines: list[bytes], blank: np.ndarray, line_numbers: np.ndarray
) -> pd.DataFrame:
    data = b"".join(lines)
    if not data.endswith(b"\n"):
        data += b"\n"
    try:
        block_size = max(len(data) + 1, 1 << 20)
        table = pa_json.read_json(io.BytesIO(data), read_options=pa_json.ReadOptions(block_size=block_size))
        # Arrow's JSON reader can build an invalid list array from lists holding nulls ([null, false]).
        for column in table.columns:
            if pa.types.is_nested(column.type):
                column.validate(full=True)
        if table.num_rows == len(line_numbers):
            return table.to_pandas(types_mapper=_arrow_types)
    except pa.ArrowInvalid:
        pass
    # Slow path, only for blocks Arrow rejects (mixed types, broken lines): parse line by line
    # so the error names the exact line; values of mixed type are reported by validation.
    records = []
    for line_no, line in zip(line_numbers, (line for line, b in zip(lines, blank) if not b)):
        try:
            record = json.loads(line)
        except ValueError as e:
            raise TraceReadError(
                f"{path}, line {line_no}: not valid JSON, the file may be truncated or corrupt ({e})"
            ) from e
        if not isinstance(record, dict):
            raise TraceReadError(
                f"{path}, line {line_no}: expected a JSON object, got {type(record).__name__}"
            )
        records.append(record)
    return pd.DataFrame.from_records(records).astype(object)
