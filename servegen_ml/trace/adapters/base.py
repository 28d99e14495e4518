"""What every format adapter provides, and the column helpers adapters share.

An adapter turns raw chunks of one public format into canonical columns in
two steps around validation:

1. :meth:`Adapter.map_chunk` renames columns and converts units (values that
   cannot be converted are left as they are, so validation reports them with
   the file's row and column);
2. after :class:`~servegen_ml.trace.validate.TraceValidator` has checked and
   sorted the chunk, :meth:`Adapter.finish_chunk` derives what needs valid
   data (conversation ids, turns) and drops helper columns.

Adapters are stateful: one instance reads one file, chunk by chunk, in order.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from servegen_ml.core.errors import UserError
from servegen_ml.trace.schema import REQUIRED_COLUMNS, STRING_DTYPE


class Adapter:
    name: ClassVar[str]
    # file column -> canonical (or helper) column
    column_map: ClassVar[dict[str, str]] = {}
    # file columns read as strings from CSV (ids must not turn into numbers)
    string_columns: ClassVar[tuple[str, ...]] = ()
    # helper columns validated like canonical ones: name -> rule (see validate.CANONICAL_RULES)
    extra_rules: ClassVar[dict[str, str]] = {}
    required: ClassVar[tuple[str, ...]] = REQUIRED_COLUMNS
    # the column whose values must be unique (validated before finish_chunk)
    unique_column: ClassVar[str] = "request_id"
    # option name -> default
    options: ClassVar[dict[str, object]] = {}

    def __init__(self, source: str, **options):
        unknown = set(options) - set(self.options)
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise UserError(f"unknown option(s) {sorted(unknown)} for format '{self.name}' (known: {known})")
        self.source = source
        self.opts = {**self.options, **options}

    @classmethod
    def matches(cls, columns: set[str]) -> bool:
        """Whether a file with these column names looks like this format."""
        raise NotImplementedError

    @classmethod
    def required_source_columns(cls) -> list[str]:
        """The file's names of the required columns (for "which column is missing" hints)."""
        labels = {canonical: raw for raw, canonical in cls.column_map.items()}
        required = cls.required if isinstance(cls.required, tuple) else REQUIRED_COLUMNS  # may be a property
        return [labels.get(c, c) for c in required]

    @property
    def column_labels(self) -> dict[str, str]:
        """canonical column -> the file's column name, for error messages."""
        return {canonical: raw for raw, canonical in self.column_map.items()}

    def map_chunk(self, raw: pd.DataFrame, row_numbers: np.ndarray) -> tuple[pd.DataFrame, list]:
        """Canonical-named columns (unvalidated) and extra problems as (kind, column, mask) triples.

        ``row_numbers`` are the chunk's 1-based rows in the file.
        """
        return self._renamed(raw), []

    def finish_chunk(self, chunk: pd.DataFrame) -> pd.DataFrame:
        return chunk

    def _renamed(self, raw: pd.DataFrame) -> pd.DataFrame:
        present = {k: v for k, v in self.column_map.items() if k in raw.columns}
        return raw[list(present)].rename(columns=present).reset_index(drop=True)


def constant_strings(value: str, n: int) -> pd.arrays.ArrowStringArray:
    """A string column holding one value, built in Arrow (no Python object per row)."""
    return _string_array(pa.repeat(pa.scalar(str(value)), n))


def _string_array(arr: pa.Array) -> pd.arrays.ArrowStringArray:
    return pd.Series(pd.arrays.ArrowExtensionArray(arr)).astype(STRING_DTYPE).array


def scaled(series: pd.Series, factor: float) -> pd.Series:
    """``series * factor`` for numeric values; non-numeric values are kept for validation to report."""
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        return series.astype(np.float64) * factor
    numbers = pd.to_numeric(series, errors="coerce")
    return series.astype(object).where(numbers.isna(), numbers * factor)


def joined_strings(columns: list[pd.Series], separator: str) -> pd.Series:
    """Row-wise ``separator.join`` of string columns; a missing part makes the result missing."""
    parts = [pa.array(c.astype(STRING_DTYPE).array).cast(pa.string()) for c in columns]
    return pd.Series(_string_array(pc.binary_join_element_wise(*parts, separator)))


def ids_as_strings(values: np.ndarray) -> pd.arrays.ArrowStringArray:
    """Integer ids -> string column, vectorized through Arrow."""
    return _string_array(pc.cast(pa.array(np.asarray(values, dtype=np.int64)), pa.string()))
