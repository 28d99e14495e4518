"""ClientPool: per-client windowed statistics, columnar and readable (Parquet + JSON).

Two tables describe every client, as ServeGen's client pool does:

``rates`` — one row per client and active rate window:
    ``client_id, window_start_s, rate (req/s), cv, family (Gamma|Weibull), shape, scale (s)``.
    Windows without a row are inactive (no requests). The stream in a window is
    a stationary renewal process whose gaps follow ``family`` with ``shape``;
    the mean gap is tied to ``rate`` (``scale`` is kept as fitted/published,
    for reference), so scaling the rate keeps the burstiness.

``pmfs`` — empirical distributions, one row per value:
    ``client_id, window_start_s, field, value, prob, count``.
    ``window_start_s`` is a data window's start, or ``-1`` for the client's
    whole-trace distribution (used where a window is missing or too sparse);
    ``client_id == "*"`` holds the population's distribution (used to score
    clients the pool has never seen). ``count`` is the number of requests
    behind the value (``prob = count / sum(count)`` per group). A table
    compressed past its cap of distinct values (:mod:`servegen_ml.pool.bins`)
    adds the column ``width``: the entry covers the integers
    ``value .. value + width - 1`` uniformly (1: the exact value); a pool
    without the column is exact.
    Fields: ``input_tokens``, ``output_tokens``, ``text_tokens``,
    ``{image,audio,video}_count`` (items per request),
    ``{image,audio,video}_tokens`` (tokens per item), ``reason_ratio``.

Times are seconds in the pool's own timeline (``0`` = learned start, which was
``origin_s`` in the source trace's clock); ``span_s`` is the learned span.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from servegen_ml.compose import interarrival as ia
from servegen_ml.core.atomic import atomic_dir
from servegen_ml.core.checkpoint_checks import check_ids, check_number, check_table, meta_field
from servegen_ml.core.clients import client_codes
from servegen_ml.core.errors import CheckpointError, UserError
from servegen_ml.core.memory import release_freed_memory
from servegen_ml.core.metafile import read_meta
from servegen_ml.pool.empirical import FieldTable, build_field_table

RATE_COLUMNS = ("client_id", "window_start_s", "rate", "cv", "family", "shape", "scale")
PMF_COLUMNS = ("client_id", "window_start_s", "field", "value", "prob", "count")
BIN_WIDTH = "width"  # optional pmfs column (compressed tables)
WHOLE_TRACE = -1
POPULATION = "*"
MODALITIES = ("image", "audio", "video")
FIELDS = (
    "input_tokens",
    "output_tokens",
    "text_tokens",
    *(f"{m}_count" for m in MODALITIES),
    *(f"{m}_tokens" for m in MODALITIES),
    "reason_ratio",
)
# More windows than this is damage (a week at 1 s windows is 604,800); tables are sized by it.
MAX_WINDOWS = 10_000_000
POOL_FORMAT = "servegen_ml.client_pool"
POOL_VERSION = 1


@dataclass
class RateLookup:
    """Sparse (client, rate window) -> (rate, family, shape) lookup."""

    key: np.ndarray  # sorted client * n_windows + window
    rate: np.ndarray
    family: np.ndarray
    shape: np.ndarray
    n_windows: int

    def get(self, client: np.ndarray, window: np.ndarray):
        """(rate, family, shape) per element; rate 0 where the client is inactive."""
        q = np.asarray(client, dtype=np.int64) * self.n_windows + np.asarray(window, dtype=np.int64)
        idx = np.minimum(np.searchsorted(self.key, q), max(len(self.key) - 1, 0))
        if len(self.key) == 0:
            hit = np.zeros(len(q), dtype=bool)
        else:
            hit = self.key[idx] == q
        rate = np.where(hit, self.rate[idx] if len(self.key) else 0.0, 0.0)
        family = np.where(hit, self.family[idx] if len(self.key) else 0, ia.GAMMA).astype(np.int8)
        shape = np.where(hit, self.shape[idx] if len(self.key) else 1.0, 1.0)
        return rate, family, shape


@dataclass
class ClientPool:
    """Per-client windowed statistics (see module docstring)."""

    clients: tuple[str, ...]
    rates: pd.DataFrame
    pmfs: pd.DataFrame
    rate_window_s: float
    data_window_s: float
    span_s: float
    origin_s: float = 0.0
    # Mean req/s of a typical client: the time model of a client the pool has never seen.
    population_rate: float = 0.0
    source: str = ""
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ derived views

    @property
    def n_clients(self) -> int:
        return len(self.clients)

    @property
    def n_rate_windows(self) -> int:
        return int(np.ceil(self.span_s / self.rate_window_s - 1e-9))

    @property
    def n_data_windows(self) -> int:
        return int(np.ceil(self.span_s / self.data_window_s - 1e-9))

    @cached_property
    def _field_codes(self) -> np.ndarray:
        """The field code of every pmfs row (int8: the only per-row array kept beside the table)."""
        field = self.pmfs["field"]
        field = field if isinstance(field.dtype, pd.CategoricalDtype) else field.astype("category")
        known = {name: i for i, name in enumerate(FIELDS)}
        unknown = [str(c) for c in field.cat.categories if str(c) not in known]
        if unknown:
            raise UserError(f"client pool: unknown fields {unknown}; expected some of {FIELDS}")
        mapping = np.array([known[str(c)] for c in field.cat.categories], dtype=np.int8)
        return mapping[field.cat.codes.to_numpy()] if len(mapping) else np.zeros(0, dtype=np.int8)

    def _pmf_rows(self, rows) -> dict[str, np.ndarray | None]:
        """Client codes, window, value, count and width of some pmfs rows (a slice: views where it can)."""
        pmfs = self.pmfs
        return {
            "client": self._codes(pmfs["client_id"], rows),
            "window": pmfs["window_start_s"].to_numpy(np.float64)[rows],
            "value": pmfs["value"].to_numpy(np.float64)[rows],
            "count": pmfs["count"].to_numpy()[rows],
            "width": pmfs[BIN_WIDTH].to_numpy()[rows] if BIN_WIDTH in pmfs else None,
        }

    @cached_property
    def fields(self) -> tuple[str, ...]:
        present = np.bincount(self._field_codes, minlength=len(FIELDS)) > 0
        return tuple(f for f, p in zip(FIELDS, present, strict=True) if p)

    @cached_property
    def modalities(self) -> tuple[str, ...]:
        """Modalities whose item count can be positive."""
        value = self.pmfs["value"].to_numpy(np.float64)
        out = []
        for m in MODALITIES:
            rows = _rows_of(self._field_codes, FIELDS.index(f"{m}_count"))
            if (value[rows] > 0).any():
                out.append(m)
        return tuple(out)

    def client_codes(self, ids) -> np.ndarray:
        """Codes of client ids; unknown ids get the population code ``n_clients``."""
        return client_codes(self.clients, ids)

    @cached_property
    def rate_lookup(self) -> RateLookup:
        client = self._codes(self.rates["client_id"])
        window = np.floor(self.rates["window_start_s"].to_numpy(np.float64) / self.rate_window_s + 1e-9)
        key = client * self.n_rate_windows + window.astype(np.int64)
        order = np.argsort(key, kind="stable")
        family = ia.family_code(self.rates["family"].to_numpy(dtype=object).astype(str))
        shape = ia.clip_shape(family, self.rates["shape"].to_numpy(np.float64))
        return RateLookup(
            key[order],
            self.rates["rate"].to_numpy(np.float64)[order],
            family[order],
            shape[order],
            self.n_rate_windows,
        )

    def field_table(self, name: str) -> FieldTable:
        """The compiled distributions of one field (built on first use)."""
        cache = self.__dict__.setdefault("_field_tables", {})
        if name not in cache:
            cols = self._pmf_rows(_rows_of(self._field_codes, FIELDS.index(name)))
            n_slots = self.n_data_windows + 1
            window = cols["window"]
            slot = np.where(window < 0, n_slots - 1, np.floor(window / self.data_window_s + 1e-9)).astype(
                np.int64
            )
            if (window >= self.span_s).any():
                raise UserError(
                    f"client pool: {name} has data windows at or after the learned span ({self.span_s} s)"
                )
            cache[name] = build_field_table(
                cols["client"],
                slot,
                cols["value"],
                cols["count"],
                self.n_clients + 1,
                n_slots,
                ratio=name == "reason_ratio",
                width=cols["width"],
            )
        return cache[name]

    def _codes(self, column: pd.Series, rows=slice(None)) -> np.ndarray:
        """Client codes of a client_id column (of its ``rows``); the population row is ``n_clients``."""
        cat = column.astype("category") if not isinstance(column.dtype, pd.CategoricalDtype) else column
        names = [str(c) for c in cat.cat.categories]
        lookup = {c: i for i, c in enumerate(self.clients)}
        lookup[POPULATION] = self.n_clients
        missing = [c for c in names if c not in lookup]
        if missing:
            raise UserError(f"client pool: client ids {missing[:5]} have rows but are not in the client list")
        mapping = np.array([lookup[c] for c in names], dtype=np.int64)
        codes = cat.cat.codes.to_numpy()[rows]
        return mapping[codes] if len(mapping) else codes.astype(np.int64)

    # ------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Write ``pool.json``, ``rates.parquet`` and ``pmfs.parquet`` into ``directory`` (atomically)."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            self.write_into(tmp)
        return directory

    def write_into(self, directory: Path) -> None:
        """Write the pool's files into an existing directory."""
        meta = {
            "format": POOL_FORMAT,
            "version": POOL_VERSION,
            "rate_window_s": self.rate_window_s,
            "data_window_s": self.data_window_s,
            "span_s": self.span_s,
            "origin_s": self.origin_s,
            "population_rate": self.population_rate,
            "source": self.source,
            "notes": list(self.notes),
            "clients": list(self.clients),
            "units": {
                "window_start_s": "s",
                "rate": "req/s",
                "scale": "s",
                "value": "tokens, items or ratio",
            },
        }
        (directory / "pool.json").write_text(json.dumps(meta, indent=1) + "\n")
        _write_parquet(self.rates[list(RATE_COLUMNS)], directory / "rates.parquet")
        _write_parquet(self.pmfs[_pmf_columns_of(self.pmfs)], directory / "pmfs.parquet")

    @classmethod
    def load(cls, directory: str | Path) -> ClientPool:
        """Read a pool written by :meth:`save`, checking every field (damage is a CheckpointError)."""
        directory = Path(directory)
        path = directory / "pool.json"
        meta = read_meta(path, POOL_FORMAT, POOL_VERSION, "client pool")
        clients = check_ids(meta_field(meta, "clients", path, list), path, "clients")
        rate_window_s = check_number(
            meta_field(meta, "rate_window_s", path, (int, float)), path, "rate_window_s", positive=True
        )
        data_window_s = check_number(
            meta_field(meta, "data_window_s", path, (int, float)), path, "data_window_s", positive=True
        )
        span_s = check_number(meta_field(meta, "span_s", path, (int, float)), path, "span_s", positive=True)
        origin_s = check_number(meta.get("origin_s", 0.0), path, "origin_s")
        for key, width in (("rate_window_s", rate_window_s), ("data_window_s", data_window_s)):
            if span_s / width > MAX_WINDOWS:
                raise CheckpointError(
                    f"{path}: field '{key}'={width:g} cuts span_s={span_s:g} into more than {MAX_WINDOWS:,} windows"
                )
        population_rate = check_number(meta.get("population_rate", 0.0), path, "population_rate", minimum=0)
        rates = _read_parquet(directory / "rates.parquet", RATE_COLUMNS)
        pmfs = _read_parquet(directory / "pmfs.parquet", PMF_COLUMNS, optional=(BIN_WIDTH,))
        _check_rates(rates, directory / "rates.parquet", set(clients), span_s)
        _check_pmfs(pmfs, directory / "pmfs.parquet", set(clients), span_s)
        return cls(
            clients=tuple(clients),
            rates=rates,
            pmfs=pmfs,
            rate_window_s=rate_window_s,
            data_window_s=data_window_s,
            span_s=span_s,
            origin_s=origin_s,
            population_rate=population_rate,
            source=str(meta.get("source", "")),
            notes=list(meta.get("notes", [])),
        )


def _pmf_columns_of(pmfs: pd.DataFrame) -> list[str]:
    return [*PMF_COLUMNS, BIN_WIDTH] if BIN_WIDTH in pmfs else list(PMF_COLUMNS)


def _distinct(column: pd.Series, path: Path) -> set[str]:
    """Distinct values of a string column (read as categories: no string per row)."""
    if column.isna().any():
        raise CheckpointError(f"{path}: column '{column.name}' has missing values")
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = np.unique(column.cat.codes.to_numpy())
        return {str(c) for c in column.cat.categories[codes]}
    return {str(c) for c in pd.unique(column)}


def _check_ids_column(column: pd.Series, path: Path, known: set[str], what: str) -> None:
    unknown = sorted(_distinct(column, path) - known)
    if unknown:
        raise CheckpointError(f"{path}: column 'client_id' has ids {unknown[:5]} that are not {what}")


def _check_rates(rates: pd.DataFrame, path: Path, clients: set[str], span_s: float) -> None:
    check_table(
        rates,
        path,
        {"window_start_s": ("f", 0.0, span_s), "rate": ("f", 0.0, None), "shape": ("f", 0.0, None)},
    )
    if (rates["window_start_s"].to_numpy(np.float64) >= span_s).any():
        raise CheckpointError(f"{path}: column 'window_start_s' has windows at or after span_s={span_s:g}")
    families = _distinct(rates["family"], path)
    if not families <= set(ia.FAMILIES):
        raise CheckpointError(
            f"{path}: column 'family' has {sorted(families - set(ia.FAMILIES))}; expected {ia.FAMILIES}"
        )
    _check_ids_column(rates["client_id"], path, clients, "in pool.json's clients")


def _check_pmfs(pmfs: pd.DataFrame, path: Path, clients: set[str], span_s: float) -> None:
    check_table(
        pmfs,
        path,
        {
            "window_start_s": ("f", WHOLE_TRACE, None),
            "value": ("f", 0.0, None),
            "prob": ("f", 0.0, 1.0),
            "count": ("f", 0.0, None),
            **({BIN_WIDTH: ("i", 1, None)} if BIN_WIDTH in pmfs else {}),
        },
    )
    window = pmfs["window_start_s"].to_numpy(np.float64)
    if ((window != WHOLE_TRACE) & ((window < 0) | (window >= span_s))).any():
        raise CheckpointError(f"{path}: column 'window_start_s' must be -1 or in [0, span_s={span_s:g})")
    fields = _distinct(pmfs["field"], path)
    if not fields <= set(FIELDS):
        raise CheckpointError(f"{path}: column 'field' has unknown fields {sorted(fields - set(FIELDS))}")
    _check_ids_column(pmfs["client_id"], path, clients | {POPULATION}, "in pool.json's clients")


def _rows_of(codes: np.ndarray, code: int):
    """Rows holding ``code``: a slice (no copies) when the table is sorted by it, else an index array."""
    if len(codes) and np.all(codes[1:] >= codes[:-1]):
        return slice(int(np.searchsorted(codes, code, "left")), int(np.searchsorted(codes, code, "right")))
    return np.flatnonzero(codes == code)


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    arrays = {}
    for name in df.columns:
        col = df[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            codes = pa.array(col.cat.codes.to_numpy().astype(np.int32))
            arrays[name] = pa.DictionaryArray.from_arrays(
                codes, pa.array([str(c) for c in col.cat.categories])
            )
        elif col.dtype == object or pd.api.types.is_string_dtype(col):
            arrays[name] = pa.array(
                col.astype(str).to_numpy(dtype=object), type=pa.string()
            ).dictionary_encode()
        else:
            arrays[name] = pa.array(col.to_numpy())
    pq.write_table(pa.table(arrays), path, compression="lz4")


def _read_parquet(path: Path, columns, optional=()) -> pd.DataFrame:
    if not path.is_file():
        raise CheckpointError(f"client pool file {path} is missing")
    try:
        table = pq.read_table(path, read_dictionary=["client_id", "field", "family"])
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise CheckpointError(f"{path}: missing columns {missing}")
        table = table.select([*columns, *(c for c in optional if c in table.column_names)])
        # Column by column, each Arrow column freed once converted: the table is never held twice.
        frame = table.to_pandas(split_blocks=True, self_destruct=True)
        del table
        release_freed_memory()  # the conversion's freed pages are not needed again
        return frame
    except (pa.ArrowException, OSError) as e:
        raise CheckpointError(f"{path}: corrupt Parquet ({e})") from None
