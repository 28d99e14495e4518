"""Streamed fit of the empirical conversation model: time-sorted chunks in, :class:`ConversationModel` out.

Rows are chained into conversations as :func:`~servegen_ml.conversations.empirical.conversation_roles`
does (by id, in arrival order; a row without an id is a conversation of one),
with one rule that bounds memory: a conversation silent for more than
``idle_s`` (:data:`IDLE_S`, 6 h) is closed, and a later row with its id opens
a new one. The trace is sorted by time, so a conversation's turns arrive in
order and one open record per conversation (its client, turn count, last
arrival, input and output, opening time) is all the state that crosses
chunks. Given the rows that are their id's last (``last_turns``, from
:mod:`~servegen_ml.conversations.last_turns`, which ``train`` computes in a
first pass), a conversation is closed at its last turn instead of idle_s
later, so only conversations with a later turn stay open; which rows chain,
and so the model, is the same (up to the order of float sums of the stop
weights). Ids are keyed by 64-bit hashes (two ids sharing a hash, about one
chance in 10**8 among a million open conversations, would be chained).

Every statistic of the model is a sum, apart from four things that need the
whole trace's end or all follow-ups: the output-bucket edges (quantiles of
the predecessors' outputs: an exact count table of output lengths), the
burn-in (99th percentile of opener-to-turn times: the top 1 % kept), the
censoring weights of gaps (the share of requests at least the gap before the
end: all timestamps) and the stop weights of last turns (the fitted gap
survival). So follow-ups, last turns and timestamps are written to record
stores (in memory up to a limit, then temporary files) and read back in
blocks once the stream ends. Memory is set by the open conversations, the
clients and the distinct values of the tables, not by the rows.
"""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd

from servegen_ml.conversations.empirical import (
    ALL_BUCKETS,
    GAP_MS,
    MAX_BURN_IN_S,
    MAX_GAP_WEIGHT,
    NEW_TOKENS,
    POPULATION,
    ConversationModel,
)
from servegen_ml.conversations.last_turns import (
    LastTurns,
    OpenConversations,
    conversation_keys,
    pair_checksum,
    runs_by_conversation,
)
from servegen_ml.core.errors import UserError
from servegen_ml.core.spec import TIME_RESOLUTION_S
from servegen_ml.pool import bins
from servegen_ml.pool.empirical import CountTable

IDLE_S = 21_600.0
# Entries of one gap or new-token table (client x bucket x value) before its largest cells are binned;
# a binned cell holds at most BINNED_CELL_ENTRIES (the grid below EXACT_BELOW plus 24 octaves).
CELL_BUDGET = 1 << 20
BINNED_CELL_ENTRIES = bins.EXACT_BELOW + 24 * bins.BINS_PER_OCTAVE
# Records kept in memory per store before they go to a temporary file; blocks read back at most this many.
RECORDS_IN_MEMORY = 1_000_000
BURN_IN_QUANTILE = 0.99

_FOLLOW_UP = np.dtype(
    [
        ("client", np.int64),
        ("prev_output", np.int64),
        ("gap_s", np.float64),
        ("new", np.int64),
        ("offset_s", np.float64),
    ]
)
_LAST_TURN = np.dtype([("client", np.int64), ("position", np.int64), ("t", np.float64), ("output", np.int64)])
_TIME = np.dtype([("t", np.float64)])


class ConversationFitter:
    """Chains conversations across time-sorted chunks and fits a :class:`ConversationModel` at the end.

    :meth:`add` returns, per row of the chunk, whether it opens a conversation
    (the generators fit their arrival streams on the openers). ``client_ids``
    in :meth:`add` overrides the chunk's client labels (the naive generator's
    single label).
    """

    def __init__(self, idle_s: float = IDLE_S, last_turns: LastTurns | None = None, **model_options):
        self.idle_s = float(idle_s)
        self.last_turns = last_turns
        self._checksum = 0
        self.model_options = model_options
        self.rows = 0
        self.follow_ups = 0
        self.t_max = -np.inf
        self._labels: dict[str, int] = {}  # client label -> code, in order of first opener
        # The one state of the fit that grows with the trace rather than the chunk: the conversations
        # active within idle_s (client and turn as int32: 48 bytes each).
        self._open = OpenConversations(
            client=np.int32, position=np.int32, last_t=np.float64, last_in=np.int64, last_out=np.int64,
            first_t=np.float64,
        )  # fmt: skip
        self._ended = _EndedConversations()
        self._follow = _RecordStore(_FOLLOW_UP)
        self._last = _RecordStore(_LAST_TURN)
        self._times = _RecordStore(_TIME, scale=8)  # 8-byte records: larger blocks, fewer passes
        self._reached = _Counts()  # (client, position) -> rows
        self._requests = _Counts()  # client -> rows
        self._openers = _Counts()  # client -> conversations
        self._gap_ms_sum = _Counts()  # client -> summed gap steps
        self._follow_counts = _Counts()  # client -> follow-ups

    # ------------------------------------------------------------ streaming

    def add(self, chunk: pd.DataFrame, client_ids: np.ndarray | None = None) -> np.ndarray:
        """Chain the chunk's rows; returns the opener mask (rows in the chunk's order)."""
        n = len(chunk)
        if n == 0:
            return np.zeros(0, dtype=bool)
        t = chunk["timestamp"].to_numpy(np.float64)
        if t[0] < self.t_max or (np.diff(t) < 0).any():
            raise UserError(
                f"row {self.rows + 1:,}: rows go back in time; conversations are chained on a sorted trace"
            )
        labels = np.asarray(
            chunk["client_id"].astype(str).to_numpy(dtype=object) if client_ids is None else client_ids,
            dtype=object,
        )
        inp = chunk["input_tokens"].to_numpy(np.int64)
        out = chunk["output_tokens"].to_numpy(np.int64)
        has_id, key = conversation_keys(chunk)
        ends = np.zeros(n, dtype=bool)
        if self.last_turns is not None:
            ends = self.last_turns.of(self.rows, n)
            self._checksum = (self._checksum + pair_checksum(key, has_id, self.rows)) % (1 << 64)
        # The first row of an id may continue the open conversation with that id.
        order, same, open_pos = runs_by_conversation(key, has_id, self._open.find)
        k, ts, has = key[order], t[order], has_id[order]
        carried = open_pos >= 0
        prev_t = np.full(n, np.nan)
        prev_t[1:][same[1:]] = ts[:-1][same[1:]]
        prev_t[carried] = self._open.last_t[open_pos[carried]]
        idle = (same | carried) & (ts - prev_t > self.idle_s)
        linked = (same | carried) & ~idle
        # Open conversations whose id came back after a silence longer than idle_s end here.
        restarted = open_pos[carried & idle]
        o = self._open
        self._write_last(
            o.client[restarted], o.position[restarted], o.last_t[restarted], o.last_out[restarted]
        )
        starts = ~same | idle
        seg = np.cumsum(starts) - 1
        seg_start = np.flatnonzero(starts)
        continues = linked[seg_start]  # the segment continues an open conversation
        seg_open = open_pos[seg_start]
        # Per segment: client code, turns before the chunk, opening time; then per row.
        seg_client = np.empty(len(seg_start), dtype=np.int64)
        seg_client[continues] = self._open.client[seg_open[continues]]
        seg_client[~continues] = self._codes(labels[order[seg_start[~continues]]])
        seg_before = np.zeros(len(seg_start), dtype=np.int64)
        seg_before[continues] = self._open.position[seg_open[continues]]
        seg_first_t = ts[seg_start].copy()
        seg_first_t[continues] = self._open.first_t[seg_open[continues]]
        client = seg_client[seg]
        position = np.arange(n) - seg_start[seg] + 1 + seg_before[seg]
        prev_in = np.zeros(n, dtype=np.int64)
        prev_out = np.zeros(n, dtype=np.int64)
        inp_s, out_s = inp[order], out[order]
        prev_in[1:], prev_out[1:] = inp_s[:-1], out_s[:-1]
        carry_rows = carried & linked
        prev_in[carry_rows] = self._open.last_in[open_pos[carry_rows]]
        prev_out[carry_rows] = self._open.last_out[open_pos[carry_rows]]
        self._open.drop(open_pos[carried])

        # Follow-ups in the trace's row order (the order the in-memory fit sums them in).
        follow = np.flatnonzero(linked)
        follow = follow[np.argsort(order[follow], kind="stable")]
        gap_s = ts[follow] - prev_t[follow]
        record = np.empty(len(follow), dtype=_FOLLOW_UP)
        record["client"], record["prev_output"], record["gap_s"] = client[follow], prev_out[follow], gap_s
        record["new"] = np.maximum(inp_s[follow] - prev_in[follow] - prev_out[follow], 0)
        record["offset_s"] = ts[follow] - seg_first_t[seg[follow]]
        self._follow.append(record)
        self.follow_ups += len(follow)
        self._gap_ms_sum.add(client[follow], np.floor(gap_s / TIME_RESOLUTION_S + 1e-6))
        self._follow_counts.add(client[follow], np.ones(len(follow)))
        self._reached.add(client * _POSITION_RADIX + position, np.ones(n))
        self._requests.add(client, np.ones(n))
        self._openers.add(seg_client[~continues], np.ones(int((~continues).sum())))
        times = np.empty(n, dtype=_TIME)
        times["t"] = t
        self._times.append(times)

        # Each id's last segment stays open unless it ends at the id's last turn; earlier segments and
        # rows without an id end here.
        seg_end = np.r_[seg_start[1:], n] - 1
        stays = has[seg_start] & np.r_[~same[seg_start[1:]], True]
        self._write_last(
            seg_client[~stays], position[seg_end[~stays]], ts[seg_end[~stays]], out_s[seg_end[~stays]]
        )
        ended = stays & ends[order[seg_end]]
        e = seg_end[ended]
        self._ended.push(k[e], seg_client[ended], position[e], ts[e], out_s[e])
        stays &= ~ended
        e = seg_end[stays]
        self._open.insert(k[e], seg_client[stays], position[e], ts[e], inp_s[e], out_s[e], seg_first_t[stays])
        self.rows += n
        self.t_max = float(t[-1])
        # Nothing can continue a conversation silent for longer than idle_s: close it.
        self._close_idle(self.t_max - self.idle_s)
        opener = np.zeros(n, dtype=bool)
        opener[order[seg_start[~continues]]] = True
        return opener

    def _codes(self, labels: np.ndarray) -> np.ndarray:
        """Client codes in order of each label's first opener."""
        inverse, uniques = pd.factorize(pd.Series(labels, dtype=object), sort=False)
        known = np.array(
            [self._labels.setdefault(str(x), len(self._labels)) for x in uniques], dtype=np.int64
        )
        return known[inverse] if len(known) else np.zeros(0, dtype=np.int64)

    def _write_last(self, client, position, t, output) -> None:
        record = np.empty(len(client), dtype=_LAST_TURN)
        record["client"], record["position"], record["t"], record["output"] = client, position, t, output
        self._last.append(record)

    def _close_idle(self, before_t: float) -> None:
        """Close the conversations whose last turn is before ``before_t``: open ones and ended ones, in the
        order of their id hashes, as if the ended ones had stayed open."""
        o = self._open
        pos = np.flatnonzero(o.last_t < before_t)
        ended = self._ended.due(before_t)
        if len(ended) == 0:
            if len(pos):
                self._write_last(o.client[pos], o.position[pos], o.last_t[pos], o.last_out[pos])
                o.drop(pos)
            return
        by_key = np.argsort(np.concatenate([o.keys[pos], ended["key"]]), kind="stable")
        self._write_last(
            np.concatenate([o.client[pos], ended["client"]])[by_key],
            np.concatenate([o.position[pos], ended["position"]])[by_key],
            np.concatenate([o.last_t[pos], ended["t"]])[by_key],
            np.concatenate([o.last_out[pos], ended["output"]])[by_key],
        )
        o.drop(pos)

    # ------------------------------------------------------------ result

    def finish(self) -> ConversationModel | None:
        """The fitted model; None when no conversation has a second turn (nothing beyond single requests)."""
        try:
            return self._finish()
        finally:
            for store in (self._follow, self._last, self._times, self._ended):
                store.close()

    def _finish(self) -> ConversationModel | None:
        marks = self.last_turns
        if marks is not None and (marks.rows != self.rows or marks.checksum != self._checksum):
            raise RuntimeError(
                f"the last-turn pass saw other rows ({marks.rows:,}) than the fit ({self.rows:,}); "
                "conversations would be cut"
            )
        self._close_idle(np.inf)
        if self.follow_ups == 0:
            return None
        names = list(self._labels)
        rank = np.empty(len(names), dtype=np.int64)
        rank[np.argsort(np.array(names, dtype=object), kind="stable")] = np.arange(len(names))
        model = ConversationModel(**self.model_options)
        model.clients_ = tuple(sorted(names))
        pop = len(names)
        end_s = self.t_max + TIME_RESOLUTION_S

        # Output-bucket edges and burn-in: order statistics, from a count table and the top offsets.
        n = self.follow_ups
        cuts = np.arange(1, model.gap_buckets) / model.gap_buckets
        burn_in_index = (n - 1) * BURN_IN_QUANTILE
        keep = n - int(np.floor(burn_in_index))
        outputs = _Counts()
        top = np.zeros(0)
        for block in self._follow.blocks():
            outputs.add(block["prev_output"], np.ones(len(block)))
            top = np.concatenate([top, block["offset_s"]])
            if len(top) > keep:
                top = np.partition(top, len(top) - keep)[len(top) - keep :]
        top = np.sort(top)
        if model.gap_buckets > 1:
            values, counts = outputs.result()
            cum = np.cumsum(counts)
            model.output_edges_ = np.unique(
                linear_quantiles(
                    lambda i: values[np.searchsorted(cum, i, side="right")].astype(np.float64), n, cuts
                )
            )
        else:
            model.output_edges_ = np.zeros(0)
        burn = linear_quantiles(lambda i: top[i - (n - len(top))], n, np.array([BURN_IN_QUANTILE]))[0]
        model.burn_in_s_ = float(min(burn, MAX_BURN_IN_S))

        # Gap and new-token tables, each gap weighted for censoring.
        cells: dict[tuple[str, int], _CellTable] = {}
        for block in self._follow.blocks():
            client = rank[block["client"]]
            gap_ms = np.floor(block["gap_s"] / TIME_RESOLUTION_S + 1e-6)
            weight = self._gap_weight(end_s, block["gap_s"])
            bucket = model.output_bucket(block["prev_output"])
            everyone = np.full(len(block), pop)
            all_buckets = np.full(len(block), ALL_BUCKETS)
            for i, (c, b) in enumerate(
                ((client, bucket), (client, all_buckets), (everyone, bucket), (everyone, all_buckets))
            ):
                cells.setdefault((GAP_MS, i), _CellTable()).add(_aggregate(c, b, gap_ms, weight))
            for i, c in enumerate((client, everyone)):
                new = block["new"].astype(np.float64)
                cells.setdefault((NEW_TOKENS, i), _CellTable()).add(
                    _aggregate(c, all_buckets, new, np.ones(len(block)))
                )
        model.values_ = pd.concat(
            [
                _value_rows(
                    GAP_MS, [cells[(GAP_MS, i)].result() for i in range(4)], pop, model.min_follow_ups
                ),
                _value_rows(
                    NEW_TOKENS,
                    [cells[(NEW_TOKENS, i)].result() for i in (0, 0, 1, 1)],
                    pop,
                    model.min_follow_ups,
                ),
            ],
            ignore_index=True,
        )
        model._compile_tables()

        # Hazards: once with every last turn a stop, then with stops weighted by P(really stopped).
        reached_key, reached = self._reached.result()
        r_client = rank[reached_key // _POSITION_RADIX]
        r_position = reached_key % _POSITION_RADIX
        lasts = _Counts()
        for block in self._last.blocks():
            lasts.add(rank[block["client"]] * _POSITION_RADIX + block["position"], np.ones(len(block)))
        model.hazard_counts_ = _hazard_counts(r_client, r_position, reached, lasts, pop)
        model._compile_hazards()
        stops = _Counts()
        for block in self._last.blocks():
            code = rank[block["client"]]
            h = model.continue_prob(model.hazard_group(code), block["position"])
            sf = np.exp(model.log_sf_gap(code, block["output"], end_s - block["t"]))
            stops.add(code * _POSITION_RADIX + block["position"], (1.0 - h) / (1.0 - h + h * sf))
        model.hazard_counts_ = _hazard_counts(r_client, r_position, reached, stops, pop, lasts)
        model._compile_hazards()
        model.summary_ = self._summary(model, rank, pop)
        return model

    def _gap_weight(self, end_s: float, gap_s: np.ndarray) -> np.ndarray:
        """1 / share of requests at least ``gap_s`` before the end (capped at MAX_GAP_WEIGHT)."""
        at_or_before = np.zeros(len(gap_s), dtype=np.int64)
        for block in self._times.blocks():
            at_or_before += np.searchsorted(block["t"], end_s - gap_s, side="right")
        share = at_or_before / self.rows
        return np.minimum(1.0 / np.maximum(share, 1.0 / MAX_GAP_WEIGHT), MAX_GAP_WEIGHT)

    def _summary(self, model: ConversationModel, rank: np.ndarray, pop: int) -> pd.DataFrame:
        def per_client(counts: _Counts) -> np.ndarray:
            key, total = counts.result()
            out = np.zeros(pop + 1)
            np.add.at(out, rank[key], total)
            out[pop] = total.sum()
            return out

        requests, conversations = per_client(self._requests), per_client(self._openers)
        gap_sum_s = per_client(self._gap_ms_sum) * TIME_RESOLUTION_S
        follow_ups = per_client(self._follow_counts)
        with np.errstate(invalid="ignore", divide="ignore"):
            return pd.DataFrame(
                {
                    "client_id": [*model.clients_, POPULATION],
                    "requests": requests.astype(np.int64),
                    "conversations": conversations.astype(np.int64),
                    "follow_ups": follow_ups.astype(np.int64),
                    "opener_share": conversations / requests,
                    "mean_turns": requests / conversations,
                    "mean_gap_s": np.where(follow_ups > 0, gap_sum_s / np.maximum(follow_ups, 1), np.nan),
                    "own_hazard": conversations >= model.min_conversations,
                    "own_lengths": follow_ups >= model.min_follow_ups,
                }
            )


_POSITION_RADIX = 1 << 32


def linear_quantiles(kth, n: int, qs: np.ndarray) -> np.ndarray:
    """numpy's default (linear) quantiles of n sorted values, from a function giving the i-th of them."""
    virtual = (n - 1) * np.asarray(qs, dtype=np.float64)
    lo = np.floor(virtual)
    gamma = virtual - lo
    lo = np.minimum(lo.astype(np.int64), n - 1)
    a, b = kth(lo), kth(np.minimum(lo + 1, n - 1))
    diff = b - a
    # numpy's lerp, term for term, so the result is the same float.
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def _aggregate(client, bucket, value, weight) -> pd.DataFrame:
    df = pd.DataFrame(
        {"client": client, "bucket": bucket, "value": np.asarray(value, np.float64), "weight": weight}
    )
    out = df.groupby(["client", "bucket", "value"], sort=True)["weight"].agg(["size", "sum"])
    return out.rename(columns={"size": "count", "sum": "weight"})


class _CellTable:
    """(client, bucket, value) -> (count, weight), summed block by block; a cell past the cap is binned.

    Binning (:mod:`servegen_ml.pool.bins`' grid, on whole time steps and tokens) commutes with
    the sums: exact while a cell holds at most VALUE_CAP values, else binned, with ``width`` the
    steps or tokens an entry spans. When the table holds more than :data:`CELL_BUDGET` entries
    (gaps in milliseconds are nearly all distinct, so a client-level table grows with the
    follow-ups), its largest cells are binned too, until it holds three quarters of the budget.
    Blocks are a fixed number of records (:meth:`_RecordStore.blocks`), so these decisions do not
    depend on the chunking of the trace.
    """

    def __init__(self):
        self.table: pd.DataFrame | None = None
        self.binned: set[tuple[int, int]] = set()

    def add(self, part: pd.DataFrame) -> None:
        if self.binned:
            part = self._fold(part, self._binned_rows(part))
        table = part if self.table is None else pd.concat([self.table, part]).groupby(level=[0, 1, 2]).sum()
        sizes = table.groupby(level=[0, 1]).size()
        new = {cell for cell in sizes[sizes > bins.VALUE_CAP].index if cell not in self.binned}
        if len(table) > CELL_BUDGET:
            new |= self._over_budget(sizes, new, len(table))
        if new:
            self.binned |= new
            table = self._fold(table, self._binned_rows(table))
        self.table = table

    def _over_budget(self, sizes: pd.Series, chosen: set, entries: int) -> set:
        """The largest exact cells whose binning brings the table to 3/4 of CELL_BUDGET (ties: by cell)."""
        exact = sizes[[cell not in self.binned and cell not in chosen for cell in sizes.index]]
        cells = exact.index.to_numpy()
        n = exact.to_numpy()
        order = np.lexsort((np.arange(len(n)), -n))  # the index is sorted, so position breaks ties by cell
        saved = np.cumsum(np.maximum(n[order] - BINNED_CELL_ENTRIES, 0))
        excess = entries - CELL_BUDGET * 3 // 4
        take = int(np.searchsorted(saved, excess)) + 1
        return set(cells[order[:take]].tolist())

    def _binned_rows(self, table: pd.DataFrame) -> np.ndarray:
        cells = pd.MultiIndex.from_tuples(sorted(self.binned), names=["client", "bucket"])
        return table.index.droplevel(2).isin(cells)

    @staticmethod
    def _fold(table: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
        if not rows.any():
            return table
        flat = table.reset_index()
        value = flat["value"].to_numpy()
        flat["value"] = np.where(rows, bins.bin_lower(value.astype(np.int64)).astype(np.float64), value)
        return flat.groupby(["client", "bucket", "value"], sort=True).sum()

    def result(self) -> pd.DataFrame:
        out = self.table.reset_index()
        if self.binned:
            rows = self._binned_rows(self.table)
            out["width"] = np.where(rows, bins.bin_width(out["value"].to_numpy()), 1.0).astype(np.int64)
        return out


def _value_rows(table: str, cells: list[pd.DataFrame], pop: int, min_follow_ups: int) -> pd.DataFrame:
    """(table, client, bucket, value, count, weight) rows of every stored cell (see the fallback rules).

    ``count`` is the number of observations, ``weight`` their censoring-corrected mass (what is sampled).
    """
    frames = []
    for df in cells:
        size = df.groupby(["client", "bucket"])["count"].transform("sum")
        whole_pop = (df["client"] == pop) & (df["bucket"] == ALL_BUCKETS)
        frames.append(df[(size >= min_follow_ups) | whole_pop])
    out = pd.concat(frames, ignore_index=True).drop_duplicates(["client", "bucket", "value"])
    if "width" in out:
        out["width"] = out["width"].fillna(1).astype(np.int64)
    out.insert(0, "table", table)
    out["count"] = out["count"].astype(np.int64)
    return out.reset_index(drop=True)


def _hazard_counts(
    client, position, reached, stopped: _Counts, pop: int, lasts: _Counts | None = None
) -> pd.DataFrame:
    """Per (client incl. the population, position): conversations that reached it, continued past it, stopped at it."""
    key = client * _POSITION_RADIX + position
    order = np.argsort(key)
    key, reached = key[order], reached[order]
    s_key, s_val = stopped.result()
    l_key, l_val = (lasts or stopped).result()
    stop = np.zeros(len(key))
    stop[np.searchsorted(key, s_key)] = s_val
    last = np.zeros(len(key))
    last[np.searchsorted(key, l_key)] = l_val
    frames = []
    c, p = key // _POSITION_RADIX, key % _POSITION_RADIX
    frames.append(
        pd.DataFrame(
            {
                "client": c,
                "position": p,
                "reached": reached.astype(np.int64),
                "continued": reached - last,
                "stopped": stop,
            }
        )
    )
    positions, inv = np.unique(p, return_inverse=True)
    frames.append(
        pd.DataFrame(
            {
                "client": np.full(len(positions), pop),
                "position": positions,
                "reached": np.bincount(inv, weights=reached).astype(np.int64),
                "continued": np.bincount(inv, weights=reached - last),
                "stopped": np.bincount(inv, weights=stop),
            }
        )
    )
    return pd.concat(frames, ignore_index=True)


class _Counts(CountTable):
    """Summed values per int64 key: a one-key :class:`~servegen_ml.pool.empirical.CountTable`."""

    def __init__(self):
        super().__init__(1)

    def add(self, key: np.ndarray, value: np.ndarray) -> None:
        if len(key):
            super().add([np.asarray(key, dtype=np.int64)], np.asarray(value, dtype=np.float64))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        (keys,), sums = super().result()
        return keys, sums


# A last-turn record with its conversation's key (the order the idle rule would close it in).
_ENDED = np.dtype([("key", np.uint64), *_LAST_TURN.descr])


class _EndedConversations:
    """Conversations closed at their marked last turn, queued in a temporary file until the idle rule would
    have closed them: their last-turn records then go out in the order of a fit without marks, so the
    stop weights (float sums) come out bit for bit the same. Memory: the records of the chunks that
    straddle the closing time, not the 6 h window."""

    def __init__(self):
        self._file = None
        self._chunks: collections.deque[tuple[int, int, float]] = collections.deque()  # offset, count, min t
        self._size = 0
        self._head = np.zeros(0, dtype=_ENDED)

    def push(self, key, client, position, t, output) -> None:
        if len(key) == 0:
            return
        record = np.empty(len(key), dtype=_ENDED)
        for name, values in zip(_ENDED.names, (key, client, position, t, output), strict=True):
            record[name] = values
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="servegen-conversations-")
        self._file.seek(self._size * _ENDED.itemsize)
        record.tofile(self._file)
        self._chunks.append((self._size, len(record), float(record["t"].min())))
        self._size += len(record)

    def due(self, before_t: float) -> np.ndarray:
        """The queued records whose last turn is before ``before_t``, in the order queued."""
        parts = [self._head]
        while self._chunks and self._chunks[0][2] < before_t:
            offset, count, _ = self._chunks.popleft()
            self._file.seek(offset * _ENDED.itemsize)
            parts.append(np.fromfile(self._file, dtype=_ENDED, count=count))
        if len(parts) == 1 and not len(self._head):
            return self._head
        queued = np.concatenate(parts)
        take = queued["t"] < before_t
        self._head = queued[~take]
        if not self._chunks and self._file is not None:
            self._file.seek(0)
            self._file.truncate()  # all read: the file starts over
            self._size = 0
        return queued[take]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._chunks.clear()
        self._head = np.zeros(0, dtype=_ENDED)


class _RecordStore:
    """Structured records in arrival order: in memory up to RECORDS_IN_MEMORY, then in a temporary file."""

    def __init__(self, dtype: np.dtype, scale: int = 1):
        self.dtype = dtype
        self.scale = scale
        self._memory: list[np.ndarray] = []
        self._held = 0
        self._file = None
        self._on_disk = 0

    def append(self, records: np.ndarray) -> None:
        self._memory.append(records)
        self._held += len(records)
        if self._held > RECORDS_IN_MEMORY * self.scale:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="servegen-conversations-")
            for part in self._memory:
                part.tofile(self._file)
            self._on_disk += self._held
            self._memory, self._held = [], 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory, self._held, self._on_disk = [], 0, 0

    def blocks(self):
        """The records in order, in blocks of RECORDS_IN_MEMORY * scale (the last may be shorter),
        whatever the sizes they were appended in, so block-wise decisions do not depend on the chunking."""
        size = RECORDS_IN_MEMORY * self.scale
        pending, held = [], 0
        for part in self._parts(size):
            pending.append(part)
            held += len(part)
            while held >= size:
                joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
                yield joined[:size]
                rest = joined[size:]
                pending, held = ([rest] if len(rest) else []), len(rest)
        if held:
            yield np.concatenate(pending)

    def _parts(self, size: int):
        if self._file is not None:
            self._file.flush()
            for start in range(0, self._on_disk, size):
                self._file.seek(start * self.dtype.itemsize)
                yield np.fromfile(self._file, dtype=self.dtype, count=min(size, self._on_disk - start))
        yield from self._memory


def fit_conversations(
    trace: pd.DataFrame, client_ids: np.ndarray | None = None, **model_options
) -> tuple[pd.DataFrame, ConversationModel | None]:
    """(the openers, on which a generator fits its arrival streams; the fitted conversation model).

    A trace without conversation ids, or whose conversations all have one turn,
    gives ``(trace, None)``: there is nothing to model beyond single requests.
    """
    if "conversation_id" not in trace.columns:
        return trace, None
    fitter = ConversationFitter(**model_options)
    opener = fitter.add(trace, client_ids)
    model = fitter.finish()
    if model is None:
        return trace, None
    return trace.iloc[np.flatnonzero(opener)].reset_index(drop=True), model


def openers_of(
    chunks: Iterable[pd.DataFrame], fitter: ConversationFitter, client_ids: str | None = None
) -> Iterator[pd.DataFrame]:
    """The conversation openers of each chunk, chaining the chunks into ``fitter`` on the way.

    Chunks without ``conversation_id`` pass whole (every row opens its own conversation, and
    the fitter records nothing for them). ``client_ids`` relabels every row (one aggregate model).
    """
    for chunk in chunks:
        if "conversation_id" not in chunk.columns or len(chunk) == 0:
            yield chunk
            continue
        labels = None if client_ids is None else np.full(len(chunk), client_ids, dtype=object)
        opener = fitter.add(chunk, labels)
        yield chunk if opener.all() else chunk.iloc[np.flatnonzero(opener)]
