"""The canonical trace schema (docs/traces.md): one request per row, columnar.

In memory a trace is a ``pandas.DataFrame`` with the dtypes below; list columns
are Arrow-backed (``list<int64>``) so item lists stay columnar instead of one
Python list per request. Use :func:`list_lengths`, :func:`list_values` and
:func:`make_list_column` to work on them with numpy.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

REQUIRED_COLUMNS = ("timestamp", "client_id", "input_tokens", "output_tokens")
INT_COLUMNS = ("input_tokens", "output_tokens", "text_tokens", "reasoning_tokens", "turn")
STRING_COLUMNS = ("client_id", "request_id", "conversation_id")
LIST_COLUMNS = ("image_tokens", "audio_tokens", "video_tokens")
# Canonical column order; optional columns appear only when present.
COLUMN_ORDER = (
    "timestamp",
    "client_id",
    "request_id",
    "input_tokens",
    "output_tokens",
    "text_tokens",
    "image_tokens",
    "audio_tokens",
    "video_tokens",
    "reasoning_tokens",
    "conversation_id",
    "turn",
)
# Item count columns derived from list columns (not stored, used by models/stats).
MODALITIES = ("image", "audio", "video")

UNITS = {
    "timestamp": "s",
    "input_tokens": "tokens",
    "output_tokens": "tokens",
    "text_tokens": "tokens",
    "image_tokens": "tokens per item",
    "audio_tokens": "tokens per item",
    "video_tokens": "tokens per item",
    "reasoning_tokens": "tokens",
    "turn": "1-based index",
}

STRING_DTYPE = pd.StringDtype("pyarrow")
LIST_ARROW_TYPE = pa.list_(pa.int64())
LIST_DTYPE = pd.ArrowDtype(LIST_ARROW_TYPE)

ARROW_SCHEMA_TYPES = {
    "timestamp": pa.float64(),
    **{c: pa.int64() for c in INT_COLUMNS},
    **{c: pa.string() for c in STRING_COLUMNS},
    **{c: LIST_ARROW_TYPE for c in LIST_COLUMNS},
}


def ordered_columns(columns) -> list[str]:
    """Canonical columns present in ``columns``, in canonical order."""
    present = set(columns)
    return [c for c in COLUMN_ORDER if c in present]


def make_list_column(counts: np.ndarray, values: np.ndarray) -> pd.Series:
    """Build a ``list<int64>`` column from per-row item counts and the flat values."""
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    arr = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.asarray(values, dtype=np.int64)))
    return pd.Series(pd.arrays.ArrowExtensionArray(arr))


def _chunked(series: pd.Series) -> pa.ChunkedArray:
    arr = pa.array(series.array) if not isinstance(series.dtype, pd.ArrowDtype) else series.array._pa_array
    if isinstance(arr, pa.Array):
        arr = pa.chunked_array([arr])
    return arr


def list_lengths(series: pd.Series) -> np.ndarray:
    """Items per row of a list column, as int64."""
    import pyarrow.compute as pc

    return pc.list_value_length(_chunked(series)).to_numpy(zero_copy_only=False).astype(np.int64)


def list_values(series: pd.Series) -> np.ndarray:
    """All items of a list column, flattened in row order, as int64."""
    import pyarrow.compute as pc

    return pc.list_flatten(_chunked(series)).to_numpy(zero_copy_only=False).astype(np.int64)


def make_trace(columns: Mapping[str, object]) -> pd.DataFrame:
    """Assemble a canonical DataFrame from column arrays (numpy, lists or Series).

    Casts each known column to its canonical dtype and orders the columns; it
    does not sort or validate (see ``servegen_ml.trace.validate``).
    """
    unknown = set(columns) - set(COLUMN_ORDER)
    if unknown:
        raise ValueError(f"not canonical trace columns: {sorted(unknown)}")
    data = {}
    for name in ordered_columns(columns):
        col = columns[name]
        if name == "timestamp":
            data[name] = np.asarray(col, dtype=np.float64)
        elif name in INT_COLUMNS:
            data[name] = np.asarray(col, dtype=np.int64)
        elif name in STRING_COLUMNS:
            data[name] = pd.array(np.asarray(col, dtype=object).astype(str), dtype=STRING_DTYPE)
        else:  # list column
            if isinstance(col, pd.Series) and isinstance(col.dtype, pd.ArrowDtype):
                data[name] = col.reset_index(drop=True)
            else:
                data[name] = pd.Series(
                    pd.arrays.ArrowExtensionArray(pa.array(list(col), type=LIST_ARROW_TYPE))
                )
    return pd.DataFrame(data)


def empty_trace(columns=REQUIRED_COLUMNS) -> pd.DataFrame:
    """A zero-row canonical trace with the given columns."""
    cols = {}
    for c in columns:
        cols[c] = make_list_column(np.zeros(0), np.zeros(0)) if c in LIST_COLUMNS else []
    return make_trace(cols)


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """Canonical DataFrame -> Arrow table with canonical types (no pandas metadata)."""
    arrays, names = [], []
    for name in ordered_columns(df.columns):
        typ = ARROW_SCHEMA_TYPES[name]
        col = df[name]
        if isinstance(col.dtype, pd.ArrowDtype) or (
            isinstance(col.dtype, pd.StringDtype) and col.dtype.storage == "pyarrow"
        ):
            arr = col.array._pa_array.cast(typ)
        elif name in STRING_COLUMNS:
            arr = pa.array(col.astype(str).to_numpy(dtype=object), type=typ)
        else:
            arr = pa.array(col.to_numpy(), type=typ)
        arrays.append(arr)
        names.append(name)
    return pa.table(arrays, names=names)


def _types_mapper(typ: pa.DataType):
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return LIST_DTYPE
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return STRING_DTYPE
    return None


def from_arrow(table: pa.Table) -> pd.DataFrame:
    """Arrow table with canonical column names -> canonical DataFrame."""
    table = table.replace_schema_metadata(None)
    casts = {}
    for name in table.column_names:
        if name in ARROW_SCHEMA_TYPES and table.schema.field(name).type != ARROW_SCHEMA_TYPES[name]:
            casts[name] = ARROW_SCHEMA_TYPES[name]
    if casts:
        table = pa.table(
            [table[n].cast(casts[n]) if n in casts else table[n] for n in table.column_names],
            names=table.column_names,
        )
    return table.to_pandas(types_mapper=_types_mapper)[ordered_columns(table.column_names)]
