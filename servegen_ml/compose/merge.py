"""Merge per-client request streams into one canonical trace (sorted by arrival)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from servegen_ml.trace.schema import INT_COLUMNS, LIST_ARROW_TYPE, STRING_DTYPE, ordered_columns


def merge_streams(
    timestamp_s: np.ndarray,
    client_code: np.ndarray,
    client_names,
    int_columns: dict[str, np.ndarray],
    list_columns: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> pd.DataFrame:
    """A canonical trace from per-request arrays in any order.

    ``list_columns`` maps a column to (items per request, flat item values) in the
    input order. Rows are sorted stably by timestamp, so ties keep input order.
    """
    order = np.argsort(timestamp_s, kind="stable")
    names = pa.array([str(c) for c in client_names], type=pa.string())
    cols: dict[str, object] = {
        "timestamp": np.asarray(timestamp_s, dtype=np.float64)[order],
        "client_id": pd.array(names.take(pa.array(np.asarray(client_code)[order])), dtype=STRING_DTYPE),
    }
    for name, values in int_columns.items():
        if name not in INT_COLUMNS and name not in ("input_tokens", "output_tokens"):
            raise ValueError(f"{name} is not an integer trace column")
        cols[name] = np.asarray(values, dtype=np.int64)[order]
    for name, (counts, values) in (list_columns or {}).items():
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        arr = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(np.asarray(values, dtype=np.int64)))
        arr = arr.take(pa.array(order)).cast(LIST_ARROW_TYPE)
        cols[name] = pd.Series(pd.arrays.ArrowExtensionArray(arr))
    return pd.DataFrame({c: cols[c] for c in ordered_columns(cols)})
