"""Writing canonical traces as Parquet, CSV or JSON Lines, chunk by chunk and atomically.

:class:`TraceWriter` writes into a temporary file beside the target and
renames it only when the ``with`` block ends without an error, so a failed or
interrupted run leaves nothing behind (or the old file untouched).
Encodings: Parquet uses the canonical Arrow types; CSV writes item lists as
JSON arrays in one cell (``"[256, 576]"``); JSON Lines writes one object per
request. Floats are written in their shortest exact form, so all three
formats round-trip.
"""

from __future__ import annotations

import contextlib
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from servegen_ml.core.atomic import atomic_path
from servegen_ml.core.errors import UserError
from servegen_ml.trace.readers import CONTAINERS
from servegen_ml.trace.schema import empty_trace, to_arrow


def output_container(path: str | Path) -> str:
    """'parquet', 'csv' or 'jsonl' from the output file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINERS:
        raise UserError(f"{path}: unknown output format; use a .parquet, .csv or .jsonl file name")
    return CONTAINERS[suffix]


def list_cells(arr: pa.Array) -> pa.Array:
    """list<int64> -> strings like '[256, 576]' (null stays null)."""
    items = pc.binary_join(pc.cast(arr, pa.list_(pa.string())), ", ")
    return pc.binary_join_element_wise("[", items, "]", "")


def csv_table(df: pd.DataFrame) -> pa.Table:
    table = to_arrow(df)
    columns = [list_cells(c.combine_chunks()) if pa.types.is_list(c.type) else c for c in table.columns]
    return pa.table(columns, names=table.column_names)


def _json_strings(arr: pa.Array) -> pa.Array:
    """Strings as JSON string literals."""
    if pc.any(pc.match_substring_regex(arr, r"[\x00-\x1f]")).as_py():
        import json

        # Control characters need \\u escapes Arrow cannot write; rare, so done per value.
        return pa.array([json.dumps(v) for v in arr.to_pylist()], type=pa.string())
    escaped = pc.replace_substring(pc.replace_substring(arr, "\\", "\\\\"), '"', '\\"')
    return pc.binary_join_element_wise('"', escaped, '"', "")


def _json_values(col: pa.Array) -> pa.Array:
    if pa.types.is_list(col.type):
        return list_cells(col)
    if pa.types.is_string(col.type):
        return _json_strings(col)
    return pc.cast(col, pa.string())


def jsonl_bytes(df: pd.DataFrame) -> bytes:
    """One JSON object per row, newline-terminated, built column-wise in Arrow."""
    table = to_arrow(df)
    if table.num_rows == 0:
        return b""
    parts = []
    for i, name in enumerate(table.column_names):
        parts += [
            ("{" if i == 0 else ", ") + f'"{name}": ',
            _json_values(table.column(name).combine_chunks()),
        ]
    lines = pc.binary_join_element_wise(*parts, "}\n", "").cast(pa.large_string())
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset : lines.offset + len(lines) + 1]
    return lines.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]]


class TraceWriter:
    """``with TraceWriter(path) as w: w.write(chunk)`` — appends canonical chunks, atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.container = output_container(path)
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._sink = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def __enter__(self) -> TraceWriter:
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        return self

    def write(self, df: pd.DataFrame) -> None:
        """Append a chunk; encoding and writing run on a background thread, one chunk at a time."""
        if self.container == "jsonl":
            data = jsonl_bytes(df)
            self._in_background(self._open_file().write, data)
        else:
            table = to_arrow(df) if self.container == "parquet" else csv_table(df)
            self._in_background(self._open_table_writer(table.schema).write_table, table)
        self.rows += len(df)

    def _in_background(self, fn, arg) -> None:
        # Arrow's encoders release the GIL, so the caller prepares the next chunk meanwhile;
        # waiting for the previous write first keeps order and at most one chunk in flight.
        self._wait()
        if self._pool is None:
            self._pool = self._stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="servegen-write"))
        self._pending = self._pool.submit(fn, arg)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _open_file(self):
        if self._sink is None:
            self._sink = self._stack.enter_context(open(self._tmp, "wb"))
        return self._sink

    def _open_table_writer(self, schema: pa.Schema):
        if self._sink is None:
            writer = (
                pq.ParquetWriter(self._tmp, schema)
                if self.container == "parquet"
                else pa_csv.CSVWriter(self._tmp, schema)
            )
            self._sink = self._stack.enter_context(contextlib.closing(writer))
        return self._sink

    def __exit__(self, *exc) -> bool:
        try:
            if exc[0] is None and self._sink is None:
                self.write(empty_trace())  # an empty trace is still a readable file
            if exc[0] is None:
                self._wait()
        except BaseException:
            self._stack.__exit__(*sys.exc_info())
            raise
        return self._stack.__exit__(*exc)


def write_trace(df: pd.DataFrame, path: str | Path) -> None:
    """Write a canonical trace atomically; the format comes from the extension (.parquet, .csv, .jsonl)."""
    with TraceWriter(path) as writer:
        writer.write(df)
