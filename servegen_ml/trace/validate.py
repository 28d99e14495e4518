"""Validation against the canonical schema (docs/traces.md), vectorized and streamable.

Every problem names the file, the row (1-based data row of the file; the line
for JSON Lines) and the column (the file's own column name when an adapter
renamed it). Checks: missing required columns, wrong types, missing/NaN
values, non-numeric or non-finite timestamps, negative or non-integer token
counts, ``turn`` < 1, item lists that are not lists of non-negative integers,
``reasoning_tokens`` > ``output_tokens`` and duplicate ``request_id`` (or the
adapter's id column).

Nothing is silently changed: a bad row is an error unless ``skip_bad_rows``
is set, in which case it is dropped and counted by kind in the report.
Unsorted rows are sorted stably with a warning. Each kind lists its first
:data:`MAX_LISTED_ROWS` rows plus a count, so a huge bad file still gives a
readable error.

:class:`TraceValidator` keeps the state that spans chunks of a streamed file
(the last timestamp; problem counts; request ids as 64-bit hashes, spilled to
disk, see below); :func:`validate_trace` is the one-chunk form.

Duplicate ids within a chunk are found with the chunk. Ids repeating an
earlier chunk's are found after the last chunk, from (hash, row) pairs spilled
to hash-partitioned temporary files (:mod:`servegen_ml.trace.spill`), so no
set of all ids is kept in memory. Hence :meth:`TraceValidator.finish` raises
them (readers call it before a consumer commits its output, which is written
atomically). With ``skip_bad_rows`` rows already passed on cannot be taken
back: :class:`~servegen_ml.trace.io.TraceReader` then makes a first pass that
only finds them (``known_duplicates``) and drops them in the second.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from servegen_ml.core.errors import UserError
from servegen_ml.trace.keymap import hash_strings, splitmix64
from servegen_ml.trace.schema import (
    COLUMN_ORDER,
    LIST_COLUMNS,
    REQUIRED_COLUMNS,
    STRING_DTYPE,
    make_list_column,
)
from servegen_ml.trace.spill import HashSpill, repeated_rows

MAX_LISTED_ROWS = 20
# Token counts above this are refused as implausible (configurable: data.max_tokens): ten times the
# longest context offered today (10M tokens); it stops 10**12 or an overflowed id from flowing on.
DEFAULT_MAX_TOKENS = 100_000_000
# Integers must fit int64 exactly (float64 loses integers from 2**53; 2**63 overflows).
INT64_LIMIT = 2.0**63
# Timestamps that are whole numbers with a median gap this long (s) look like milliseconds.
MS_SUSPECT_MEDIAN_GAP_S = 50.0

# Column rule kinds: time (finite number), count (int >= 0), turn (int >= 1), int, string, list.
CANONICAL_RULES = {
    "timestamp": "time",
    "client_id": "string",
    "request_id": "string",
    "conversation_id": "string",
    "input_tokens": "count",
    "output_tokens": "count",
    "text_tokens": "count",
    "reasoning_tokens": "count",
    "turn": "turn",
    **{c: "list" for c in LIST_COLUMNS},
}

DESCRIPTIONS = {
    "missing_column": "missing required column",
    "missing": "missing value (empty, null or NaN)",
    "wrong_type": "wrong type",
    "not_number": "not a number",
    "not_finite": "not a finite number",
    "not_integer": "not an integer",
    "negative": "negative value",
    "too_large": "too large for a 64-bit integer",
    "implausible": "implausible token count",
    "turn_below_1": "turn must be >= 1",
    "not_list": "not a list of integers like [256, 576]",
    "bad_list_item": "list item is not a non-negative integer up to data.max_tokens",
    "reasoning_gt_output": "reasoning_tokens > output_tokens",
    "duplicate_id": "duplicate id (an earlier row has it)",
    "column_set_changed": "columns differ from the first rows of the file",
    "bad_datetime": "not a date-time like 2023-11-16 18:15:46.680590",
}


@dataclass
class Problem:
    """One kind of problem in one column: how many rows, and the first few with their values."""

    kind: str
    column: str | None
    count: int = 0
    rows: list = field(default_factory=list)
    values: list = field(default_factory=list)
    detail: str = ""

    def add(self, rows: np.ndarray, values) -> None:
        self.count += len(rows)
        room = MAX_LISTED_ROWS - len(self.rows)
        if room > 0:
            self.rows.extend(int(r) for r in rows[:room])
            self.values.extend(_short_repr(v) for v in list(values[:room]))


def _short_repr(value) -> str:
    text = repr(value.tolist() if hasattr(value, "tolist") else value)
    return text if len(text) <= 60 else text[:57] + "..."


class TraceValidationError(UserError):
    """A trace failed validation; ``problems`` lists them (file, rows, column, kind)."""

    def __init__(self, source: str, problems: list[Problem], column_labels=None, row_label: str = "row"):
        self.source = source
        self.problems = problems
        super().__init__(format_problems(source, problems, column_labels or {}, row_label))


def _column_text(column: str | None, labels: Mapping[str, str]) -> str:
    if column is None:
        return ""
    label = labels.get(column, column)
    return f"column '{label}'" + (f" ({column})" if label != column else "")


def format_problems(
    source: str, problems: list[Problem], labels: Mapping[str, str], row_label: str = "row"
) -> str:
    """Readable error text: one line per listed row, then a count of the rows not listed."""
    total = sum(max(p.count, 1) for p in problems)
    lines = [f"{source}: {total:,} problem(s) found"]
    for p in problems:
        what = DESCRIPTIONS[p.kind] + (f" ({p.detail})" if p.detail else "")
        col = _column_text(p.column, labels)
        if not p.rows:
            lines.append(f"  {source}: {col}: {what}")
            continue
        for row, value in zip(p.rows, p.values):
            lines.append(f"  {source}, {row_label} {row}, {col}: {what}: {value}")
        if p.count > len(p.rows):
            lines.append(f"  ... and {p.count - len(p.rows):,} more {row_label}s with '{p.kind}' in {col}")
    return "\n".join(lines)


@dataclass
class ValidationReport:
    """What validation saw and did: rows read and kept, rows dropped by kind, whether rows were sorted."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    dropped_by_kind: dict = field(default_factory=dict)
    resorted_rows: int = 0
    globally_unsorted: bool = False
    # Plausibility warnings about the whole file (units), shown by validate and warned by readers.
    notes: list = field(default_factory=list)

    @property
    def rows_dropped(self) -> int:
        return self.rows_read - self.rows_kept

    def describe(self) -> str:
        if not self.rows_dropped:
            return f"{self.source}: all {self.rows_kept:,} rows valid"
        kinds = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.dropped_by_kind.items()))
        return f"{self.source}: dropped {self.rows_dropped:,} bad rows of {self.rows_read:,} (rows by problem: {kinds})"


# ----------------------------------------------------------------------------------------------
# Column checkers: each returns (canonical values, {kind: bad-row mask}) without looping over rows.


def _is_arrow_nested(dtype) -> bool:
    return isinstance(dtype, pd.ArrowDtype) and pa.types.is_nested(dtype.pyarrow_dtype)


def _object_wrong_type(series: pd.Series, allowed: tuple) -> np.ndarray:
    # Only object columns (from the JSON fallback parser) can mix Python types; checked per value.
    if series.dtype != object:
        return np.zeros(len(series), dtype=bool)
    ok = series.map(lambda v: v is None or (isinstance(v, allowed) and not isinstance(v, bool)))
    return ~ok.to_numpy(dtype=bool)


def _numeric(series: pd.Series) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(float64 values, exact int64 values or None, masks) of a column that should hold numbers."""
    n = len(series)
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or _is_arrow_nested(dtype):
        missing = series.isna().to_numpy(dtype=bool)
        return np.zeros(n), None, {"missing": missing, "wrong_type": ~missing}
    if pd.api.types.is_integer_dtype(dtype):
        missing = series.isna().to_numpy(dtype=bool)
        exact = series.to_numpy(dtype=np.int64, na_value=0)
        return exact.astype(np.float64), exact, {"missing": missing}
    if pd.api.types.is_float_dtype(dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return values, None, {"missing": np.isnan(values)}
    missing = series.isna().to_numpy(dtype=bool)
    wrong = _object_wrong_type(series, (str, int, float, np.integer, np.floating)) & ~missing
    values = pd.to_numeric(series.where(~wrong, None), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    return (
        values,
        None,
        {"missing": missing, "wrong_type": wrong, "not_number": np.isnan(values) & ~missing & ~wrong},
    )


def _check_number(
    series: pd.Series, rule: str, max_tokens: float = DEFAULT_MAX_TOKENS
) -> tuple[np.ndarray, dict]:
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "if":
        # The common case (a clean numeric column): only the checks that can fail for it.
        values = series.to_numpy()
        if dtype.kind == "f" and rule == "time" and np.isfinite(values).all():
            return values, {}
        if dtype.kind == "i" and rule != "time":
            exact = values.astype(np.int64, copy=False)
            if rule == "count":
                return exact, {"negative": exact < 0, "implausible": exact > max_tokens}
            if rule == "turn":
                return exact, {"turn_below_1": exact < 1}
            return exact, {}
    values, exact, masks = _numeric(series)
    usable = ~np.logical_or.reduce(list(masks.values()))
    if rule == "time":
        masks["not_finite"] = usable & np.isinf(values)
        return np.where(usable & ~masks["not_finite"], values, 0.0), masks
    finite = usable & np.isfinite(values)
    masks["not_finite"] = usable & ~finite
    masks["not_integer"] = finite & (np.floor(values) != values)
    masks["too_large"] = finite & (np.abs(values) >= INT64_LIMIT) & (exact is None)
    if rule == "count":
        masks["negative"] = finite & (values < 0)
        masks["implausible"] = finite & (values > max_tokens) & ~masks["too_large"]
    elif rule == "turn":
        masks["turn_below_1"] = finite & (values < 1)
    ok = finite & ~masks["not_integer"] & ~masks["too_large"]
    out = exact if exact is not None else np.where(ok, values, 0).astype(np.int64)
    return np.where(ok, out, 0), masks


def _check_string(series: pd.Series) -> tuple[pd.arrays.ArrowStringArray, dict]:
    dtype = series.dtype
    missing = series.isna().to_numpy(dtype=bool)
    wrong = np.zeros(len(series), dtype=bool)
    if pd.api.types.is_bool_dtype(dtype) or _is_arrow_nested(dtype):
        wrong = ~missing
        # No value of a list or bool column is usable as an id (and pandas cannot put "" into a list column).
        series = pd.Series(np.full(len(series), "", dtype=object))
    elif pd.api.types.is_float_dtype(dtype):
        # Integer ids read as floats (a JSON column with nulls) print as "7", not "7.0".
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.all(np.isnan(values) | (values == np.floor(values))):
            series = pd.Series(np.where(missing, 0, values).astype(np.int64))
    else:
        wrong = _object_wrong_type(series, (str, int, np.integer)) & ~missing
    text = series.where(~(missing | wrong), "").astype(STRING_DTYPE)
    return text.array, {"missing": missing, "wrong_type": wrong}


def _to_arrow_array(series: pd.Series) -> pa.Array:
    if isinstance(series.dtype, (pd.ArrowDtype, pd.StringDtype)):
        arr = pa.array(series.array)
    else:
        arr = pa.array(series.to_numpy(dtype=object), from_pandas=True)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _parse_list_strings(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """'[256, 576]' strings (CSV) -> list<string> of items, and the rows that are not bracketed lists."""
    trimmed = pc.utf8_trim_whitespace(arr)
    bracketed = pc.fill_null(pc.match_substring_regex(trimmed, r"^\[[^\[\]]*\]$"), False)
    inner = pc.utf8_trim_whitespace(pc.utf8_slice_codeunits(trimmed, 1, -1))
    empty = pc.fill_null(pc.equal(inner, ""), False)
    # "[]" splits into one empty item; make those rows empty lists.
    inner = pc.if_else(pc.or_(empty, pc.invert(bracketed)), pa.scalar(None, inner.type), inner)
    items = pc.split_pattern(inner, ",")
    items = pc.if_else(pc.is_null(items), pa.scalar([], items.type), items)
    return items, ~bracketed.to_numpy(zero_copy_only=False)


def _list_items(
    items: pa.Array, max_tokens: float = DEFAULT_MAX_TOKENS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items per row, item values as int64, item-is-valid mask) of a list array of any item type."""
    counts = pc.list_value_length(items).to_numpy(zero_copy_only=False)
    counts = np.nan_to_num(counts.astype(np.float64)).astype(np.int64)  # null rows have no items
    flat = pc.list_flatten(items)
    if pa.types.is_null(flat.type):
        return counts, np.zeros(0, dtype=np.int64), np.ones(0, dtype=bool)
    if pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type):
        flat = pc.utf8_trim_whitespace(flat)
        numeric = pc.fill_null(pc.match_substring_regex(flat, r"^\+?[0-9]+$"), False).to_numpy(
            zero_copy_only=False
        )
        # Digits beyond int64 would make the cast fail: keep at most 18 (still far above max_tokens).
        numeric &= pc.utf8_length(flat).to_numpy(zero_copy_only=False) <= 18
        flat = pc.if_else(pa.array(numeric), flat, "0").cast(pa.int64())
    elif not (pa.types.is_integer(flat.type) or pa.types.is_floating(flat.type)):
        return counts, np.zeros(len(flat), dtype=np.int64), np.zeros(len(flat), dtype=bool)
    else:
        numeric = np.ones(len(flat), dtype=bool)
    values = flat.to_numpy(zero_copy_only=False).astype(np.float64)
    valid = numeric & np.isfinite(values) & (values >= 0) & (np.floor(values) == values)
    valid &= values <= max_tokens
    return counts, np.where(valid, values, 0).astype(np.int64), valid


def _check_object_lists(series: pd.Series) -> tuple[pa.Array, np.ndarray]:
    # Python lists from the JSON fallback parser: checked per value (only bad input takes this path).
    def as_items(v):
        if isinstance(v, (list, tuple)) and all(
            isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v
        ):
            return list(v)
        return None

    parsed = [as_items(v) for v in series]
    not_list = np.array([p is None for p in parsed], dtype=bool)
    return pa.array([p or [] for p in parsed], type=pa.list_(pa.int64())), not_list


def _check_list(series: pd.Series, max_tokens: float = DEFAULT_MAX_TOKENS) -> tuple[pd.Series, dict]:
    missing = series.isna().to_numpy(dtype=bool) if not _is_arrow_nested(series.dtype) else None
    not_list = np.zeros(len(series), dtype=bool)
    if series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) not in ("string", "empty"):
        missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in series], dtype=bool)
        items, not_list = _check_object_lists(series)
        not_list &= ~missing
    else:
        arr = _to_arrow_array(series)
        if missing is None:
            missing = arr.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            # Item lists repeat a lot ("[]", "[576, 1024]"): parse each distinct text once.
            encoded = pc.dictionary_encode(arr)
            items, not_list = _parse_list_strings(encoded.dictionary)
            codes = encoded.indices
            items = items.take(codes)
            not_list = not_list[np.nan_to_num(codes.to_numpy(zero_copy_only=False), nan=0).astype(np.int64)]
            not_list &= ~missing
        elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            items = arr
        else:
            items = pa.array([[]] * len(arr), type=pa.list_(pa.int64()))
            not_list = ~missing
    counts, values, item_ok = _list_items(items, max_tokens)
    row_of_item = np.repeat(np.arange(len(counts)), counts)
    bad_item_rows = np.zeros(len(counts), dtype=bool)
    bad_item_rows[row_of_item[~item_ok]] = True
    bad = missing | not_list | bad_item_rows
    keep_item = ~bad[row_of_item]
    column = make_list_column(np.where(bad, 0, counts), values[keep_item])
    return column, {
        "missing": missing,
        "not_list": not_list,
        "bad_list_item": bad_item_rows & ~not_list & ~missing,
    }


def check_column(series: pd.Series, rule: str, max_tokens: float = DEFAULT_MAX_TOKENS):
    """Canonical values of one column and the masks of its bad rows, by kind."""
    if rule in ("time", "count", "turn", "int"):
        return _check_number(series, rule, max_tokens)
    if rule == "string":
        return _check_string(series)
    return _check_list(series, max_tokens)


# ----------------------------------------------------------------------------------------------


class TraceValidator:
    """Validates a trace chunk by chunk, keeping cross-chunk state; see the module docstring.

    ``collect=True`` records problems and lets :meth:`finish` raise one error
    for the whole file (the ``validate`` command); otherwise the first chunk
    with problems raises (unless ``skip_bad_rows``).
    """

    def __init__(
        self,
        source: str = "<memory>",
        skip_bad_rows: bool = False,
        *,
        column_labels: Mapping[str, str] | None = None,
        extra_rules: Mapping[str, str] | None = None,
        required: tuple = REQUIRED_COLUMNS,
        row_label: str = "row",
        collect: bool = False,
        unique_column: str = "request_id",
        max_tokens: float = DEFAULT_MAX_TOKENS,
        known_duplicates: np.ndarray | None = None,
    ):
        self.source = source
        self.max_tokens = float(max_tokens)
        self.skip_bad_rows = skip_bad_rows
        self.labels = dict(column_labels or {})
        self.rules = {**CANONICAL_RULES, **(extra_rules or {})}
        self.required = required
        self.row_label = row_label
        self.collect = collect
        self.unique_column = unique_column
        self.report = ValidationReport(source)
        self.problems: dict[tuple, Problem] = {}
        self._columns: list[str] | None = None
        # Ids of earlier chunks: spilled (hash, row) pairs, or the rows a first pass found repeating them.
        self._id_spill = HashSpill()
        self._known_duplicates = None if known_duplicates is None else np.sort(known_duplicates)
        self._last_timestamp = -np.inf
        self._first_timestamp = np.inf
        self._whole_seconds = True
        self._gaps = 0
        self._long_gaps = 0

    def _error(self, problems: list[Problem]) -> TraceValidationError:
        return TraceValidationError(self.source, problems, self.labels, self.row_label)

    def _check_columns(self, df: pd.DataFrame, first_row: int) -> list[str]:
        missing = [c for c in self.required if c not in df.columns]
        if missing:
            raise self._error([Problem("missing_column", c) for c in missing])
        columns = [c for c in df.columns if c in self.rules]
        if self._columns is None:
            self._columns = columns
        elif set(columns) != set(self._columns):
            detail = (
                f"from {self.row_label} {first_row}: {sorted(columns)} instead of {sorted(self._columns)}"
            )
            raise self._error([Problem("column_set_changed", None, detail=detail)])
        return columns

    def _duplicate_ids(self, ids, usable: np.ndarray, row_numbers: np.ndarray) -> np.ndarray:
        """Rows whose id an earlier row of this chunk has (compared as 64-bit hashes), or a row of an
        earlier chunk when a first pass found them; the rest are spilled for :meth:`cross_chunk_duplicates`."""
        if isinstance(ids, np.ndarray):
            hashes = splitmix64(ids.astype(np.int64).view(np.uint64))
        else:
            hashes = hash_strings(pd.Series(ids))
        duplicate = pd.Series(hashes).duplicated().to_numpy().copy()
        duplicate &= usable
        if self._known_duplicates is not None:
            duplicate |= np.isin(row_numbers, self._known_duplicates)
        else:
            first = usable & ~duplicate
            self._id_spill.add(hashes[first], np.asarray(row_numbers, dtype=np.int64)[first])
        return duplicate

    def cross_chunk_duplicates(self) -> tuple[np.ndarray, np.ndarray]:
        """After the last chunk: (rows whose id a row of an earlier chunk has, that row), by row."""
        rows, first = repeated_rows(self._id_spill)
        self._id_spill.close()
        return rows, first

    def _record_cross_chunk_duplicates(self) -> bool:
        """Add the ids repeating an earlier chunk's to the problems; whether there were any."""
        if self._known_duplicates is not None or self.unique_column not in (self._columns or []):
            return False
        rows, first = self.cross_chunk_duplicates()
        if not len(rows):
            return False
        problem = self.problems.setdefault(
            ("duplicate_id", self.unique_column), Problem("duplicate_id", self.unique_column)
        )
        # Merged with the duplicates found within chunks, so the listed rows are the first of the file.
        listed = sorted(
            [*zip(problem.rows, problem.values), *((int(r), f"as row {int(f)}") for r, f in zip(rows, first))]
        )[:MAX_LISTED_ROWS]
        problem.rows, problem.values = [r for r, _ in listed], [v for _, v in listed]
        problem.count += len(rows)
        if self.skip_bad_rows:
            # Kept in the chunks already passed on: only a first pass (known_duplicates) can drop them.
            problem.detail = "in an earlier chunk; skip_bad_rows drops these only with known_duplicates"
        return True

    def check(
        self,
        df: pd.DataFrame,
        row_numbers: np.ndarray | None = None,
        extra_problems: list | None = None,
        raw: pd.DataFrame | None = None,
    ) -> tuple[pd.DataFrame, ValidationReport]:
        """The valid, sorted canonical chunk (plus extra-rule columns) and the cumulative report.

        ``extra_problems`` are (kind, column, row mask) triples an adapter found while mapping;
        ``raw`` is the chunk as read, so messages quote the file's values (e.g. ms, date strings).
        """
        n = len(df)
        if row_numbers is None:
            row_numbers = self.report.rows_read + 1 + np.arange(n, dtype=np.int64)
        columns = self._check_columns(df, int(row_numbers[0]) if n else self.report.rows_read + 1)
        out, masks = {}, list(extra_problems or [])
        for col in columns:
            out[col], col_masks = check_column(
                df[col].reset_index(drop=True), self.rules[col], self.max_tokens
            )
            masks += [(kind, col, m) for kind, m in col_masks.items()]
        bad_cells = np.logical_or.reduce([m for _, _, m in masks]) if masks else np.zeros(n, bool)
        if "reasoning_tokens" in out and "output_tokens" in out:
            over = (out["reasoning_tokens"] > out["output_tokens"]) & ~bad_cells
            masks.append(("reasoning_gt_output", "reasoning_tokens", over))
        if self.unique_column in out:
            duplicate = self._duplicate_ids(out[self.unique_column], ~bad_cells, row_numbers)
            masks.append(("duplicate_id", self.unique_column, duplicate))
        bad = self._record(masks, df if raw is None else raw.reset_index(drop=True), row_numbers)
        self.report.rows_read += n
        if bad.any() and not self.skip_bad_rows and not self.collect:
            raise self._error(list(self.problems.values()))
        return self._finish_chunk(out, ~bad, row_numbers, n), self.report

    def _record(self, masks, shown: pd.DataFrame, row_numbers) -> np.ndarray:
        """Add masks to the problem list (quoting values from ``shown``); the rows with any problem."""
        bad = np.zeros(len(row_numbers), dtype=bool)
        for kind, col, mask in masks:
            if not mask.any():
                continue
            rows = np.flatnonzero(mask)
            detail = f"above data.max_tokens={self.max_tokens:,.0f}" if kind == "implausible" else ""
            problem = self.problems.setdefault((kind, col), Problem(kind, col, detail=detail))
            listed = rows[: max(MAX_LISTED_ROWS - len(problem.rows), 0)]
            name = self.labels.get(col, col) if self.labels.get(col, col) in shown else col
            values = shown[name].iloc[listed].to_numpy(dtype=object) if name in shown else [""] * len(listed)
            problem.add(row_numbers[rows], values)
            self.report.dropped_by_kind[kind] = self.report.dropped_by_kind.get(kind, 0) + len(rows)
            bad |= mask
        return bad

    def _finish_chunk(self, out: dict, keep: np.ndarray, row_numbers: np.ndarray, n: int) -> pd.DataFrame:
        order = [c for c in COLUMN_ORDER if c in out] + [c for c in out if c not in COLUMN_ORDER]
        chunk = pd.DataFrame({c: out[c] for c in order}, index=pd.RangeIndex(n))
        if not keep.all():
            chunk = chunk[keep].reset_index(drop=True)
            row_numbers = row_numbers[keep]
        self.report.rows_kept += len(chunk)
        return self._sorted(chunk, row_numbers)

    def _sorted(self, chunk: pd.DataFrame, row_numbers: np.ndarray) -> pd.DataFrame:
        if len(chunk) == 0:
            return chunk
        t = chunk["timestamp"].to_numpy()
        backwards = np.flatnonzero(t[1:] < t[:-1])
        if len(backwards):
            first = int(row_numbers[backwards[0] + 1])
            warnings.warn(
                f"{self.source}: {len(backwards):,} {self.row_label}s arrive before the row above them "
                f"(first at {self.row_label} {first}); sorted by timestamp (stable)",
                stacklevel=3,
            )
            self.report.resorted_rows += len(backwards)
            chunk = chunk.iloc[np.argsort(t, kind="stable")].reset_index(drop=True)
        if t.min() < self._last_timestamp:
            self.report.globally_unsorted = True
        gaps = np.diff(np.sort(t))
        if t.min() > self._last_timestamp > -np.inf:
            # The gap across the chunk border counts too (with 1-row chunks it is the only one).
            gaps = np.r_[t.min() - self._last_timestamp, gaps]
        gaps = gaps[gaps > 0]
        self._last_timestamp = max(self._last_timestamp, float(t.max()))
        self._first_timestamp = min(self._first_timestamp, float(t.min()))
        self._whole_seconds &= bool(np.all(t == np.floor(t)))
        self._gaps += len(gaps)
        self._long_gaps += int(np.count_nonzero(gaps >= MS_SUSPECT_MEDIAN_GAP_S))
        return chunk

    def _unit_notes(self) -> list[str]:
        """Warnings for timestamps that look like milliseconds, or a trace with no time span."""
        notes = []
        rows = self.report.rows_kept
        if rows > 1 and self._gaps == 0:
            notes.append(
                f"{self.source}: all {rows:,} requests have the same timestamp ({self._first_timestamp:g}); "
                "there is no arrival process to learn, and rates computed from it are meaningless"
            )
        elif self._whole_seconds and self._gaps >= 10 and self._long_gaps * 2 > self._gaps:
            span = self._last_timestamp - self._first_timestamp
            notes.append(
                f"{self.source}: timestamps are whole numbers with a typical gap of at least "
                f"{MS_SUSPECT_MEDIAN_GAP_S:g} s ({rows:,} requests over {span:,.0f} s = {rows / span:.4f} req/s); "
                "they look like milliseconds, but this format's timestamp is in seconds. "
                "If they are ms, divide the column by 1000 (or use data.format=mooncake, whose timestamps are ms)"
            )
        return notes

    def finish(self) -> ValidationReport:
        """End of the stream: ids repeating an earlier chunk's are found here; then, unless rows are
        skipped, the error for the whole file (collect mode) or for those ids is raised."""
        if self._record_cross_chunk_duplicates() and self.skip_bad_rows:
            raise self._error([self.problems[("duplicate_id", self.unique_column)]])
        if self.problems and not self.skip_bad_rows:
            raise self._error(list(self.problems.values()))
        if not self.report.notes:
            self.report.notes = self._unit_notes()
            for note in self.report.notes:
                warnings.warn(note, stacklevel=2)
        return self.report


def validate_trace(
    df: pd.DataFrame,
    source: str = "<memory>",
    skip_bad_rows: bool = False,
    row_offset: int = 0,
    *,
    column_labels: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, ValidationReport]:
    """Validate an in-memory trace; rows are numbered ``row_offset + 1, ...`` in messages.

    Returns the canonical, sorted trace and a :class:`ValidationReport`;
    raises :class:`TraceValidationError` listing the problems.
    """
    validator = TraceValidator(source, skip_bad_rows, column_labels=column_labels)
    rows = row_offset + 1 + np.arange(len(df), dtype=np.int64)
    clean, report = validator.check(df, rows)
    return clean, report


def require_time_span(trace: pd.DataFrame, source: str = "the trace") -> None:
    """Refuse to learn arrivals from a trace whose requests all share one timestamp (no rate to learn)."""
    if len(trace) > 1:
        t = trace["timestamp"].to_numpy(np.float64)
        require_time_span_of(len(trace), float(t.min()), float(t.max()), source)


def require_time_span_of(rows: int, t_min: float, t_max: float, source: str = "the trace") -> None:
    """:func:`require_time_span` from a streamed trace's row count and first and last timestamps."""
    if rows > 1 and t_max == t_min:
        raise UserError(
            f"{source}: all {rows:,} requests have the same timestamp ({t_min:g}); a generator "
            "learns arrival rates from the gaps between requests and there are none"
        )
