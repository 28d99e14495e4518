"""Columnar JSON Lines writing: each chunk of rows becomes one Arrow string array, written as raw bytes.

Values are formatted by Arrow's compute kernels (integers, shortest round-trip
floats, lists joined with ``", "``), so no Python object is made per request.
Only numbers, lists of numbers and strings that need no JSON escaping (fixed
vocabulary such as ``"text"``) are supported -- what the export formats need.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def number_field(values: np.ndarray) -> pa.Array:
    """JSON text of integers or floats (floats must be finite)."""
    values = np.asarray(values)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError("JSON Lines export: non-finite number in a numeric field")
    return pc.cast(pa.array(values), pa.string())


def list_field(counts: np.ndarray, flat_values: np.ndarray) -> pa.Array:
    """JSON text ``[a, b, ...]`` of integer lists given per-row counts and the flat values."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    items = pc.cast(pa.array(np.asarray(flat_values, dtype=np.int64)), pa.string())
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), items)
    return pc.binary_join_element_wise("[", pc.binary_join(lists, ", "), "]", "")


def string_field(values: np.ndarray) -> pa.Array:
    """JSON text of plain strings (no quotes, backslashes or control characters)."""
    arr = pa.array(np.asarray(values, dtype=object), type=pa.string())
    if pc.any(pc.match_substring_regex(arr, r'["\\\x00-\x1f]')).as_py():
        raise ValueError("JSON Lines export: string field needs escaping, which this writer does not do")
    return pc.binary_join_element_wise('"', arr, '"', "")


def write_lines(fh: BinaryIO, fields: dict[str, pa.Array]) -> None:
    """Write one JSON object per row, keys in ``fields`` order, each line ending in ``\\n``."""
    parts: list[pa.Array | str] = []
    for i, (name, text) in enumerate(fields.items()):
        parts += [("{" if i == 0 else ", ") + f'"{name}": ', text]
    parts.append("}\n")
    lines = pc.binary_join_element_wise(*parts, "").cast(pa.large_string())
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    _write_string_bytes(fh, lines)


def _write_string_bytes(fh: BinaryIO, arr: pa.Array) -> None:
    """The concatenated bytes of a large_string array, without a Python str per row."""
    if len(arr) == 0:
        return
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    fh.write(memoryview(data_buf)[int(offsets[0]) : int(offsets[-1])])
