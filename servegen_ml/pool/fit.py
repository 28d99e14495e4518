"""Fit a ClientPool from a request-level trace: the ServeGen method, vectorized across windows.

Per client and rate window (``rate_window_s``): the rate (requests / observed
seconds of the window), the gap CV, and the better of a Gamma or Weibull
maximum-likelihood fit of the gaps between the client's requests inside the
window. Per client and data window (``data_window_s``): the empirical
distribution of every field.

Sparse windows: a rate window with fewer than ``min_events`` requests keeps
its own rate but takes the family and shape fitted to all of the client's
gaps; a client with fewer than ``min_events`` requests overall, or without
two requests in one window (no gap to fit), is Poisson (Gamma, shape 1). A
data window with fewer than ``min_events`` requests is not stored, so sampling and scoring use the client's whole-trace distribution.

Gaps of exactly zero (simultaneous arrivals, e.g. millisecond timestamps) are
fitted as half the time resolution
(:data:`servegen_ml.generators.base.TIME_RESOLUTION_S`), the centre of the
first discretization bin the likelihood scores them in; other gaps are used
as they are.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd

from servegen_ml.compose import interarrival as ia
from servegen_ml.core.errors import UserError
from servegen_ml.core.spec import TIME_RESOLUTION_S
from servegen_ml.pool import bins
from servegen_ml.pool.empirical import CountTable, count_by_keys
from servegen_ml.pool.table import (
    BIN_WIDTH,
    FIELDS,
    MODALITIES,
    POPULATION,
    RATE_COLUMNS,
    WHOLE_TRACE,
    ClientPool,
)
from servegen_ml.trace.schema import list_lengths, list_values
from servegen_ml.trace.validate import require_time_span_of

RATIO_DECIMALS = 4


def fit_client_pool(
    trace: pd.DataFrame,
    rate_window_s: float = 600.0,
    data_window_s: float = 21_600.0,
    min_events: int = 20,
    source: str = "",
) -> ClientPool:
    """A ClientPool fitted to a canonical, sorted trace (one chunk of :class:`PoolFitter`)."""
    fitter = PoolFitter(rate_window_s, data_window_s, min_events, source)
    fitter.add(trace)
    return fitter.finish()


class PoolFitter:
    """Fits a ClientPool from a time-sorted trace streamed in chunks, in memory bounded by clients x windows.

    Everything the fit needs is a sum over requests or comes from one rate window:
    a rate window's gaps are fitted as soon as the stream has moved past it (the
    trace is sorted, so no later row can fall into it), value counts per (field,
    client, data window) are added up (exact up to a cap of distinct values, then
    compressed onto a fixed grid: :mod:`servegen_ml.pool.bins`; the client's
    whole-trace and the population's tables are binned where any of their parts
    is or where they pass the cap themselves), and each client's last timestamp carries
    the gaps across chunk boundaries. Only the whole-trace fit of each client
    needs all of its gaps: they are kept in memory up to :data:`GAPS_IN_MEMORY`
    and spilled to a temporary file beyond, which the Gamma/Weibull fits then read
    block by block. The pool equals the in-memory fit of the whole trace; once
    gaps spill, the client fits agree up to float rounding (sums in another order).

    ``fit_rates=False`` skips the per-window arrival fits (the naive generator
    uses only the value tables). ``data_window_s=None`` puts every request into
    one data window.
    """

    def __init__(
        self,
        rate_window_s: float = 600.0,
        data_window_s: float | None = 21_600.0,
        min_events: int = 20,
        source: str = "",
        fit_rates: bool = True,
    ):
        self.rate_window_s = float(rate_window_s)
        self.data_window_s = None if data_window_s is None else float(data_window_s)
        self.min_events = int(min_events)
        self.source = source
        self.fit_rates = fit_rates
        self.rows = 0
        self.origin_s: float | None = None
        self.t_max = -np.inf
        self._codes: dict[str, int] = {}  # client name -> code in order of first appearance
        self._last_tau = np.zeros(0)
        self._last_window = np.zeros(0, dtype=np.int64)
        self._events = np.zeros(0, dtype=np.int64)
        self._open_counts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (client, window, n)
        self._open_gaps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (client, window, gap)
        self._closed: list[dict[str, np.ndarray]] = []
        self._client_gaps = _GapStore()
        self._values = bins.ValueTable()  # (table; value) -> requests, bounded
        self._table_packed = np.zeros(0, dtype=np.int64)  # table -> packed (field, client, slot)
        self._lookup_packed = np.zeros(0, dtype=np.int64)  # sorted packed groups ...
        self._lookup_table = np.zeros(0, dtype=np.int64)  # ... and their tables
        self._slot_requests = CountTable(2)  # (client, slot) -> requests
        self._max_slot = -1

    # ------------------------------------------------------------------ streaming

    def add(self, chunk: pd.DataFrame) -> PoolFitter:
        """Add the next chunk; chunks continue in time (a row earlier than the one before is an error)."""
        start = 0
        while start < len(chunk):
            # Pieces end on fixed row counts, where the value tables keep their budget (chunking-free).
            piece = chunk.iloc[start : start + bins.CHECK_ROWS - self.rows % bins.CHECK_ROWS]
            self._add(piece)
            start += len(piece)
            if self.rows % bins.CHECK_ROWS == 0:
                self._values.checkpoint(self._table_order())
        return self

    def _add(self, chunk: pd.DataFrame) -> None:
        n = len(chunk)
        if n == 0:
            return
        t = chunk["timestamp"].to_numpy(np.float64)
        backwards = np.flatnonzero(t[1:] < t[:-1])
        if t[0] < self.t_max or len(backwards):
            row = self.rows + (1 if t[0] < self.t_max else int(backwards[0]) + 2)
            raise UserError(
                f"{self.source or 'the trace'}, row {row:,}: earlier than the row before; a streamed fit "
                "needs a trace sorted by timestamp (servegen-ml convert writes one)"
            )
        if self.origin_s is None:
            self.origin_s = float(t[0])
        self.t_max = float(t[-1])
        self.rows += n
        client = self._client_codes(chunk["client_id"])
        tau = t - self.origin_s
        self._events += np.bincount(client, minlength=len(self._events))
        if self.fit_rates:
            self._add_gaps(client, tau)
        if self.data_window_s is None:
            slot = np.zeros(n, dtype=np.int64)
        else:
            slot = np.floor(tau / self.data_window_s).astype(np.int64)
        self._max_slot = max(self._max_slot, int(slot.max()))
        self._slot_requests.add([client, slot], np.ones(n))
        for name, (value, row) in request_fields(chunk).items():
            table = self._tables_of(_pack_group(FIELDS.index(name), client[row], slot[row]))
            ratio = name == "reason_ratio"
            self._values.add(table, bins.value_codes(value, ratio, f"{self.source or 'the trace'}, {name}"))

    def _tables_of(self, packed: np.ndarray) -> np.ndarray:
        """The value table of each packed (field, client, slot), new ones numbered as they come."""
        uniq, inverse = np.unique(packed, return_inverse=True)
        pos = np.minimum(np.searchsorted(self._lookup_packed, uniq), max(len(self._lookup_packed) - 1, 0))
        known = (self._lookup_packed[pos] == uniq) if len(self._lookup_packed) else np.zeros(len(uniq), bool)
        table = np.where(known, self._lookup_table[pos] if len(self._lookup_table) else 0, -1)
        new = uniq[~known]
        if len(new):
            table[~known] = len(self._table_packed) + np.arange(len(new))
            self._table_packed = np.r_[self._table_packed, new]
            self._values.grow(_unpack_group(new)[0] == FIELDS.index("reason_ratio"))
            order = np.argsort(self._table_packed)
            self._lookup_packed, self._lookup_table = self._table_packed[order], order
        return table[inverse]

    def _table_order(self) -> np.ndarray:
        """Rank of each table's (field, client, slot): an order that does not depend on the chunking."""
        order = np.empty(len(self._table_packed), dtype=np.int64)
        order[self._lookup_table] = np.arange(len(self._table_packed))
        return order

    def _client_codes(self, ids: pd.Series) -> np.ndarray:
        codes, names = pd.factorize(ids.astype(str), sort=False)
        lookup = np.array(
            [self._codes.setdefault(str(name), len(self._codes)) for name in names], dtype=np.int64
        )
        grow = len(self._codes) - len(self._events)
        if grow > 0:
            self._events = np.r_[self._events, np.zeros(grow, dtype=np.int64)]
            self._last_tau = np.r_[self._last_tau, np.full(grow, np.nan)]
            self._last_window = np.r_[self._last_window, np.full(grow, -1, dtype=np.int64)]
        return lookup[codes]

    def _add_gaps(self, client: np.ndarray, tau: np.ndarray) -> None:
        window = np.floor(tau / self.rate_window_s).astype(np.int64)
        # By client, then time (stable: simultaneous requests keep their order), as the whole-trace fit sorts.
        order = np.lexsort((tau, client))
        c, w, ts = client[order], window[order], tau[order]
        first = np.r_[True, c[1:] != c[:-1]]
        last = np.r_[c[1:] != c[:-1], True]
        prev_tau = np.r_[np.nan, ts[:-1]]
        prev_window = np.r_[-1, w[:-1]]
        # A client's first request in the chunk follows its last one of the chunks before.
        prev_tau[first] = self._last_tau[c[first]]
        prev_window[first] = self._last_window[c[first]]
        self._last_tau[c[last]] = ts[last]
        self._last_window[c[last]] = w[last]
        has_gap = prev_window == w
        gaps = ts[has_gap] - prev_tau[has_gap]
        gaps = np.where(gaps > 0, gaps, TIME_RESOLUTION_S / 2)
        self._open_gaps.append((c[has_gap], w[has_gap], gaps))
        (kc, kw), counts = count_by_keys([client, window], np.ones(len(client)))
        self._open_counts.append((kc, kw, counts))
        # Sorted input: no later row can fall into a window before the last row's.
        self._close_windows_before(int(window.max()))

    def _close_windows_before(self, window_limit: int | None) -> None:
        """Fit the open rate windows that end before ``window_limit`` (all when None)."""
        if not self._open_counts:
            return
        kc, kw, kn = (np.concatenate(x) for x in zip(*self._open_counts))
        gc, gw, gaps = (np.concatenate(x) for x in zip(*self._open_gaps))
        if window_limit is not None:
            closing, gap_closing = kw < window_limit, gw < window_limit
            if not closing.any():
                return
            self._open_counts = [(kc[~closing], kw[~closing], kn[~closing])]
            self._open_gaps = [(gc[~gap_closing], gw[~gap_closing], gaps[~gap_closing])]
            kc, kw, kn = kc[closing], kw[closing], kn[closing]
            gc, gw, gaps = gc[gap_closing], gw[gap_closing], gaps[gap_closing]
        else:
            self._open_counts, self._open_gaps = [], []
        (uc, uw), counts = count_by_keys([kc, kw], kn)
        # Grouped by (client, window); the buffer is in time order, which the stable sort keeps.
        order = np.lexsort((gw, gc))
        gc, gw, gaps = gc[order], gw[order], gaps[order]
        radix = int(uw.max()) + 1
        dense = np.searchsorted(uc * radix + uw, gc * radix + gw)
        family, shape, scale, cv = ia.fit_renewal(gaps, dense, len(uc))
        self._closed.append(
            {
                "client": uc,
                "window": uw,
                "count": counts,
                "family": family,
                "shape": shape,
                "scale": scale,
                "cv": cv,
            }
        )
        self._client_gaps.append(gc, gaps)

    # ------------------------------------------------------------------ result

    def finish(self, min_events: int | None = None, data_window_s: float | None = None) -> ClientPool:
        """The fitted pool; ``min_events``/``data_window_s`` override the constructor's (naive: known at the end)."""
        if self.rows == 0:
            raise UserError("cannot fit a generator to an empty trace")
        require_time_span_of(self.rows, self.origin_s, self.t_max, self.source or "the trace")
        min_events = self.min_events if min_events is None else int(min_events)
        data_window_s = data_window_s or self.data_window_s
        names = list(self._codes)
        rank = np.empty(len(names), dtype=np.int64)
        rank[np.argsort(np.array(names, dtype=object), kind="stable")] = np.arange(len(names))
        clients = tuple(sorted(names))
        end_s = self.t_max - self.origin_s
        n_windows = int(np.floor(end_s / self.rate_window_s)) + 1
        span_s = n_windows * self.rate_window_s
        events = np.empty(len(names), dtype=np.int64)
        events[rank] = self._events
        if self.fit_rates:
            self._close_windows_before(None)
            rates = self._rates(rank, events, end_s, min_events)
        else:
            rates = pd.DataFrame({c: pd.Series([], dtype=object) for c in ("client", *RATE_COLUMNS[1:])})
            rates["client"] = rates["client"].astype(np.int64)
        rate_client = rates.pop("client").to_numpy()
        rates["client_id"] = pd.Categorical.from_codes(rate_client, categories=list(clients))
        pmfs = self._pmfs(rank, list(clients), data_window_s, min_events)
        active_s = np.bincount(rate_client, minlength=len(clients)) * self.rate_window_s
        per_client = events / np.maximum(active_s, self.rate_window_s)
        return ClientPool(
            clients=clients,
            rates=rates[list(RATE_COLUMNS)],
            pmfs=pmfs,
            rate_window_s=self.rate_window_s,
            data_window_s=float(data_window_s),
            span_s=float(span_s),
            origin_s=float(self.origin_s),
            population_rate=float(np.median(per_client)),
            source=self.source,
            notes=[f"fitted from {self.rows} requests, {len(clients)} clients, min_events={min_events}"],
        )

    def _rates(self, rank: np.ndarray, c_events: np.ndarray, end_s: float, min_events: int) -> pd.DataFrame:
        closed = {k: np.concatenate([c[k] for c in self._closed]) for k in self._closed[0]}
        u_client, u_window = rank[closed["client"]], closed["window"]
        order = np.lexsort((u_window, u_client))
        u_client, u_window = u_client[order], u_window[order]
        counts, family, shape, scale, cv = (
            closed[k][order] for k in ("count", "family", "shape", "scale", "cv")
        )
        c_family, c_shape, _, c_cv = ia.fit_renewal_blocks(self._client_gaps.blocks(rank), len(c_events))
        # Too few requests, or none two in one window (no gap to fit: the fit is NaN): Poisson.
        poisson = (c_events < min_events) | ~np.isfinite(c_shape)
        c_family[poisson], c_shape[poisson], c_cv[poisson] = ia.GAMMA, 1.0, 1.0

        window_s = self.rate_window_s
        sparse = (counts < min_events) | ~np.isfinite(shape)
        family = np.where(sparse, c_family[u_client], family)
        shape = np.where(sparse, c_shape[u_client], shape)
        cv = np.where(sparse, c_cv[u_client], cv)
        exposure = np.clip(end_s - u_window * window_s, 0.01 * window_s, window_s)
        rate = counts / exposure
        scale = np.where(sparse | ~np.isfinite(scale), ia.scale_for_rate(family, shape, rate), scale)
        return pd.DataFrame(
            {
                "client": u_client,
                "window_start_s": (u_window * window_s).astype(np.float64),
                "rate": rate,
                "cv": cv,
                "family": np.asarray(ia.FAMILIES, dtype=object)[family],
                "shape": shape,
                "scale": scale,
            }
        )

    def _pmfs(
        self, rank: np.ndarray, names: list[str], data_window_s: float, min_events: int
    ) -> pd.DataFrame:
        """Per-window, whole-trace and population value counts of every field, sorted for loading."""
        n_clients = len(names)
        whole = self._max_slot + 1
        table, code, n = self._values.result(self._table_order())
        binned = self._values.binned[table]
        f, c, s = _unpack_group(self._table_packed[table])
        c = rank[c]
        (rc, rs), requests = self._slot_requests.result()
        radix = whole + 1
        dense_keys = np.sort((rank[rc] * radix + rs)[requests >= min_events])
        key = c * radix + s
        pos = np.minimum(np.searchsorted(dense_keys, key), max(len(dense_keys) - 1, 0))
        dense = (dense_keys[pos] == key) if len(dense_keys) else np.zeros(len(key), dtype=bool)
        del table, key, pos, dense_keys  # the fold below is this step's peak: nothing held that is done with
        # Whole-trace tables (field, client) and population tables (field): binned where a part is.
        ratio = FIELDS.index("reason_ratio")
        per_field = n_clients + 1
        forced = np.zeros(len(FIELDS) * per_field, dtype=bool)
        forced[(f * per_field + c)[binned]] = True
        is_ratio = np.arange(len(forced)) // per_field == ratio
        wt, wcode, wn, w_binned = bins.over_cap_and_fold(f * per_field + c, code, n, is_ratio, forced)
        wf, wc = wt // per_field, wt % per_field
        forced = np.zeros(len(FIELDS), dtype=bool)
        forced[wf[w_binned]] = True
        is_ratio = np.arange(len(FIELDS)) == ratio
        pf, pcode, pn, p_binned = bins.over_cap_and_fold(wf, wcode, wn, is_ratio, forced)
        # The table has ~3 rows per window entry: built one narrow column at a time, each freed once used.
        parts = [
            [f[dense], c[dense], s[dense], code[dense], n[dense], binned[dense]],
            [wf, wc, np.full(len(wf), whole), wcode, wn, w_binned],
            [pf, np.full(len(pf), n_clients), np.full(len(pf), whole), pcode, pn, p_binned],
        ]
        del f, c, s, code, n, binned, dense, wf, wc, wcode, wn, w_binned, pf, pcode, pn, p_binned

        def column(i: int, value=None) -> np.ndarray:
            out = np.concatenate([value(p) if value else p[i] for p in parts])
            for p in parts:
                p[i] = None
            return out

        v = column(3, lambda p: bins.code_values(p[3], p[0] == ratio))
        f = column(0).astype(np.int8)
        c = column(1).astype(np.int32)
        s = column(2).astype(np.int32)
        n = column(4)
        binned = column(5)
        # Sorted by (field, client with the population last, window with the whole trace last, value).
        order = np.lexsort((v, s, c, f))
        f = f[order]
        c = c[order]
        s = s[order]
        v = v[order]
        n = n[order]
        binned = binned[order]
        del order
        group = np.cumsum(np.r_[True, (f[1:] != f[:-1]) | (c[1:] != c[:-1]) | (s[1:] != s[:-1])])
        group -= 1
        prob = np.bincount(group, weights=n)[group]
        del group
        np.divide(n, prob, out=prob)
        columns = {"client_id": pd.Categorical.from_codes(c, categories=[*names, POPULATION])}
        del c
        window = s * data_window_s
        window[s == whole] = float(WHOLE_TRACE)
        del s
        columns["window_start_s"] = window
        columns["field"] = pd.Categorical.from_codes(f, categories=list(FIELDS))
        columns["value"], columns["prob"], columns["count"] = v, prob, n
        if binned.any():
            # Exact pools keep the columns they always had (and their bytes).
            rows = binned & (f != ratio)
            width = np.ones(len(v), dtype=np.int64)
            width[rows] = bins.bin_width(v[rows]).astype(np.int64)
            columns[BIN_WIDTH] = width
        # copy=False: the columns are not copied into one 2-D block per dtype.
        return pd.DataFrame(columns, copy=False)


# (field, client, data window) packed into one int64: 4 + 30 + 29 bits.
_CLIENT_BITS, _SLOT_BITS = 30, 29


def _pack_group(field: int, client: np.ndarray, slot: np.ndarray) -> np.ndarray:
    if len(client) and (client.max() >= 1 << _CLIENT_BITS or slot.max() >= 1 << _SLOT_BITS):
        raise UserError(f"more than {1 << _CLIENT_BITS:,} clients or {1 << _SLOT_BITS:,} data windows")
    return (np.int64(field) << (_CLIENT_BITS + _SLOT_BITS)) | (client << _SLOT_BITS) | slot


def _unpack_group(group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    field = group >> (_CLIENT_BITS + _SLOT_BITS)
    client = (group >> _SLOT_BITS) & ((1 << _CLIENT_BITS) - 1)
    return field, client, group & ((1 << _SLOT_BITS) - 1)


# Gaps kept in memory for the whole-trace client fits (16 bytes each); beyond, they go to a temporary file.
GAPS_IN_MEMORY = 16_000_000
# Gaps per block read back from that file: each fit pass holds ~10 float arrays of a block's length.
GAPS_PER_BLOCK = 2_000_000
_GAP_RECORD = np.dtype([("client", np.int64), ("gap", np.float64)])


class _GapStore:
    """(client, gap) pairs in arrival order; read back in blocks for :func:`ia.fit_renewal_blocks`."""

    def __init__(self, in_memory: int | None = None, per_block: int | None = None):
        self.in_memory = GAPS_IN_MEMORY if in_memory is None else in_memory
        self.per_block = GAPS_PER_BLOCK if per_block is None else per_block
        self._memory: list[tuple[np.ndarray, np.ndarray]] = []
        self._held = 0
        self._file = None
        self._on_disk = 0

    def append(self, client: np.ndarray, gaps: np.ndarray) -> None:
        self._memory.append((client.astype(np.int64), gaps.astype(np.float64)))
        self._held += len(gaps)
        if self._held > self.in_memory:
            self._spill()

    def _spill(self) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="servegen-gaps-")
        for client, gaps in self._memory:
            record = np.empty(len(gaps), dtype=_GAP_RECORD)
            record["client"], record["gap"] = client, gaps
            record.tofile(self._file)
            self._on_disk += len(gaps)
        self._memory, self._held = [], 0

    def blocks(self, rank: np.ndarray):
        """A callable giving (gap, client rank) blocks: all in memory as one, or the file's in fixed-size blocks.

        Once gaps have spilled, the rest follow them to the file, so the blocks (and so the float
        sums over them) are the same whatever the chunking, and no block is larger than ``per_block``.
        """
        if self._file is not None and self._memory:
            self._spill()

        def read():
            if self._file is not None:
                self._file.flush()
                for start in range(0, self._on_disk, self.per_block):
                    self._file.seek(start * _GAP_RECORD.itemsize)
                    count = min(self.per_block, self._on_disk - start)
                    record = np.fromfile(self._file, dtype=_GAP_RECORD, count=count)
                    yield record["gap"].copy(), rank[record["client"]]
            elif self._memory:
                gaps = np.concatenate([g for _, g in self._memory])
                yield gaps, rank[np.concatenate([c for c, _ in self._memory])]

        return read


def request_fields(trace: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Field -> (value per observation, request row of the observation).

    Multimodal traces give text tokens, items per request and tokens per item;
    others give input tokens. The reasoning ratio is observed on requests with output.
    """
    n = len(trace)
    rows = np.arange(n)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    present = [m for m in MODALITIES if f"{m}_tokens" in trace.columns]
    if present:
        item_sum = np.zeros(n, dtype=np.int64)
        for m in present:
            counts = list_lengths(trace[f"{m}_tokens"])
            values = list_values(trace[f"{m}_tokens"])
            out[f"{m}_count"] = (counts, rows)
            out[f"{m}_tokens"] = (values, np.repeat(rows, counts))
            item_sum += np.bincount(np.repeat(rows, counts), weights=values, minlength=n).astype(np.int64)
        if "text_tokens" in trace.columns:
            text = trace["text_tokens"].to_numpy(np.int64)
        else:
            text = np.maximum(trace["input_tokens"].to_numpy(np.int64) - item_sum, 0)
        out["text_tokens"] = (text, rows)
    else:
        out["input_tokens"] = (trace["input_tokens"].to_numpy(np.int64), rows)
    output = trace["output_tokens"].to_numpy(np.int64)
    out["output_tokens"] = (output, rows)
    if "reasoning_tokens" in trace.columns:
        has = output > 0
        ratio = trace["reasoning_tokens"].to_numpy(np.float64)[has] / output[has]
        out["reason_ratio"] = (np.round(ratio, RATIO_DECIMALS), rows[has])
    return out
