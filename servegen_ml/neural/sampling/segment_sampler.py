"""Batched sampling of many client streams at once, in numpy.

Why segments: a heavy client sends ~100k requests an hour, and each event of a
stream depends on the one before, so one chain per client would need ~100k
sequential steps. Instead every client's time range is cut into segments of
about ``segment_events`` expected events and every segment is a separate batch
row, all advanced together one event per step. Each row starts from the
client's initial state and a start token ``warmup_events`` expected events
before its segment and discards those warm-up events, so the recurrent state
has settled when the kept part begins (a row whose warm-up already drew
WARMUP_OVERRUN times that many events, a burst, skips ahead to its segment). A row starts at an
arbitrary moment, not at an event, so its first gap is the forward recurrence time. The approximation: history older
than the warm-up does not reach across segment borders (time of day and the
client's usual activity still do, through the time and activity features).
When few rows are left, one that runs far longer than planned (a burst) hands
the rest of its time to new rows cut at its current pace, so the tail of the
batch does not advance one event per step.

Time: rows live in each client's *unit time* ``u`` (the integral of its rate
level times the rate multiplier ``m``; :mod:`servegen_ml.neural.rate_level`), in
which the model's gaps have mean 1: a row of ``L`` units expects ``L`` events
whatever the client's burstiness. :class:`TimeMap` maps ``u`` back to spec time
through the inverse of each client's cumulative rate; time-of-day features use
real time. A rate target scales the level, so gaps keep their shape in unit time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servegen_ml.neural.rate_level import resolved_gap
from servegen_ml.neural.sampling.numpy_tpp import NumpyTPP, RowBias

# A straggler is cut into at most this many new rows at once.
MAX_SPLIT = 1024
# Weight of the newest gap in a row's moving-average pace.
PACE_WEIGHT = 1.0 / 16
# A row whose warm-up draws this many times its planned events (a burst) skips ahead to its kept part.
WARMUP_OVERRUN = 4.0
# Warm-up before the spec start is mapped to at most this many seconds before it (time features only).
MAX_WARMUP_S = 6 * 3600.0


@dataclass
class ClientTable:
    """Per sampled client: embedding (C, E), log-gap normalizer (C,), (C,), activity rows (C, bins),
    rate level (C, bins) req/s (servegen_ml.neural.rate_level) and the heads' offsets (C, P)."""

    embedding: np.ndarray
    gap_mean: np.ndarray
    gap_std: np.ndarray
    activity: np.ndarray
    level: np.ndarray
    offsets: np.ndarray


@dataclass
class TimeMap:
    """Each client's unit time <-> spec time (seconds since the spec start) <-> learned-timeline position."""

    unit_grid: np.ndarray  # (C, G) each client's unit time at t_grid, non-decreasing, 0 at t = 0
    t_grid: np.ndarray  # (G,) spec time, 0 .. duration_s
    start_rate: np.ndarray  # (C,) unit time per second at the spec start (warm-up before it)
    start_s: float

    def __post_init__(self):
        # One sorted key array for all clients: client c's grid shifted past every earlier client's.
        ends = self.unit_grid[:, -1] + 1.0
        self._offset = np.concatenate([[0.0], np.cumsum(ends)[:-1]])
        self._keys = (self.unit_grid + self._offset[:, None]).ravel()

    def to_spec_time(self, client: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Spec times of unit times ``u`` of clients ``client`` (linear within grid cells)."""
        g = len(self.t_grid)
        j = np.searchsorted(self._keys, u + self._offset[client], side="right") - 1 - client * g
        j = np.clip(j, 0, g - 2)
        u0, u1 = self.unit_grid[client, j], self.unit_grid[client, j + 1]
        step = u1 - u0
        frac = np.clip(np.where(step > 0, (u - u0) / np.where(step > 0, step, 1.0), 0.0), 0.0, 1.0)
        t = self.t_grid[j] + frac * (self.t_grid[j + 1] - self.t_grid[j])
        before = np.maximum(u / np.maximum(self.start_rate[client], 1e-300), -MAX_WARMUP_S)
        return np.where(u < 0, before, t)

    def position(self, t: np.ndarray) -> np.ndarray:
        """Learned-timeline position of spec times (the features read it at its phase in the span)."""
        return self.start_s + np.asarray(t, dtype=np.float64)


@dataclass
class Rows:
    """Batch rows: a client, where its warm-up begins, where kept events begin, where it ends (unit time)."""

    client: np.ndarray
    tau_begin: np.ndarray
    tau_keep: np.ndarray
    tau_end: np.ndarray


@dataclass
class SampledEvents:
    """Kept events, unsorted: client index, spec time, marks (see NumpyTPP.sample_marks), flat items per modality."""

    client: np.ndarray
    t_s: np.ndarray
    marks: dict[str, np.ndarray]
    items: dict[str, np.ndarray]


def plan_rows(totals: np.ndarray, segment_events: float, warmup_events: float) -> Rows:
    """Cut each client's unit-time range ``[0, totals[c])`` into rows of about ``segment_events`` units."""
    n_rows = np.maximum(1, np.ceil(totals / segment_events)).astype(np.int64)
    client = np.repeat(np.arange(len(totals)), n_rows)
    k = np.arange(len(client)) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    length = (totals / n_rows)[client]
    keep = k * length
    end = np.where(k == n_rows[client] - 1, totals[client], keep + length)
    return Rows(client, keep - warmup_events, keep, end)


class _Recorder:
    """Collects kept events step by step; one concatenation at the end."""

    def __init__(self, mark_names, modalities):
        self.mark_names = list(mark_names)
        self.clients, self.times, self.marks, self.items = [], [], [], {m: [] for m in modalities}

    def add(self, clients, t, marks, items, keep):
        self.clients.append(clients[keep])
        self.times.append(t[keep])
        self.marks.append({k: v[keep] for k, v in marks.items()})
        for m, tokens in items.items():
            self.items[m].append(tokens[np.repeat(keep, marks[f"{m}_count"])])

    def result(self) -> SampledEvents:
        cat = np.concatenate
        if not self.clients:
            none = np.zeros(0, dtype=np.int64)
            return SampledEvents(
                none, np.zeros(0), {k: none for k in self.mark_names}, {m: none for m in self.items}
            )
        marks = {k: cat([s[k] for s in self.marks]) for k in self.mark_names}
        items = {m: cat(v).astype(np.int64) for m, v in self.items.items()}
        return SampledEvents(cat(self.clients), cat(self.times), marks, items)


@dataclass
class _Lanes:
    """State of the rows still running (one entry per row)."""

    client: np.ndarray
    tau_begin: np.ndarray
    tau_keep: np.ndarray
    tau_end: np.ndarray
    tau: np.ndarray  # unit time of the row's last event (or its start token)
    recent_gap: np.ndarray  # moving average of the row's last unit gaps: its current pace
    warm: np.ndarray  # warm-up events drawn so far
    h: np.ndarray
    emb_gates: np.ndarray
    gap_mean: np.ndarray
    gap_std: np.ndarray
    prev_gap: np.ndarray
    prev_start: np.ndarray
    prev_marks: dict

    @classmethod
    def start(
        cls, tpp: NumpyTPP, clients: ClientTable, client, tau_begin, tau_keep, tau_end, warmup_events
    ) -> _Lanes:
        h, emb_gates = tpp.client_rows(clients.embedding[client])
        n = len(client)
        marks = tpp.layout.mark_columns()
        return cls(
            client, tau_begin, tau_keep, tau_end, tau_begin.astype(np.float64).copy(),
            np.maximum(tau_keep - tau_begin, 1e-9) / max(warmup_events, 1.0), np.zeros(n, dtype=np.int64),
            h, emb_gates, clients.gap_mean[client].astype(np.float64), clients.gap_std[client].astype(np.float64),
            np.zeros(n), np.ones(n, dtype=bool), {k: np.zeros(n) for k in marks},
        )  # fmt: skip

    def select(self, keep: np.ndarray) -> _Lanes:
        fields = {k: getattr(self, k)[keep] for k in self.__dataclass_fields__ if k != "prev_marks"}
        return _Lanes(**fields, prev_marks={k: v[keep] for k, v in self.prev_marks.items()})

    def extend(self, other: _Lanes) -> _Lanes:
        fields = {
            k: np.concatenate([getattr(self, k), getattr(other, k)])
            for k in self.__dataclass_fields__
            if k != "prev_marks"
        }
        marks = {k: np.concatenate([v, other.prev_marks[k]]) for k, v in self.prev_marks.items()}
        return _Lanes(**fields, prev_marks=marks)


def _split_stragglers(tpp, clients, lanes: _Lanes, tail_events: int, warmup_events: float) -> _Lanes:
    """Hand the rest of each slow row to new rows of ~``tail_events`` events at the row's current pace.

    A row that draws far more events than planned (a burst) would otherwise run
    alone for thousands of steps; its remaining time is cut like the initial
    segments, the new rows starting with their own warm-up.
    """
    rate = 1.0 / np.maximum(lanes.recent_gap, 1e-3)
    start = np.maximum(lanes.tau, lanes.tau_keep)
    remaining = np.maximum(lanes.tau_end - start, 0.0)
    pieces = np.minimum(np.ceil(rate * remaining / tail_events), MAX_SPLIT).astype(np.int64)
    idx = np.flatnonzero(pieces >= 2)
    if len(idx) == 0:
        return lanes
    n_new = pieces[idx] - 1
    owner = np.repeat(np.arange(len(idx)), n_new)
    k = 1 + np.arange(len(owner)) - np.repeat(np.cumsum(n_new) - n_new, n_new)
    width = remaining[idx] / pieces[idx]
    keep_from = start[idx][owner] + k * width[owner]
    end = np.where(k == pieces[idx][owner] - 1, lanes.tau_end[idx][owner], keep_from + width[owner])
    lanes.tau_end[idx] = start[idx] + width
    new = _Lanes.start(
        tpp, clients, lanes.client[idx][owner], keep_from - warmup_events, keep_from, end, warmup_events
    )
    return lanes.extend(new)


def sample_rows(
    tpp: NumpyTPP,
    clients: ClientTable,
    rows: Rows,
    time_map: TimeMap,
    rng: np.random.Generator,
    max_steps: int,
    warmup_events: float,
    tail_events: int,
) -> SampledEvents:
    """Advance all rows one event per step until each passes its end; keep events inside [tau_keep, tau_end)."""
    lanes = _Lanes.start(
        tpp, clients, rows.client, rows.tau_begin, rows.tau_keep, rows.tau_end, warmup_events
    )
    recorder = _Recorder(lanes.prev_marks.keys(), tpp.layout.modalities)
    bias = tpp.client_bias(clients.offsets)
    # When few rows remain, slow ones are split so the tail does not run one event per step.
    few_rows = max(8, len(rows.client) // 20)
    for _ in range(max_steps):
        if len(lanes.tau) == 0:
            return recorder.result()
        if len(lanes.tau) <= few_rows:
            lanes = _split_stragglers(tpp, clients, lanes, tail_events, warmup_events)
        lanes = _step(tpp, lanes, clients, bias, time_map, rng, recorder, warmup_events)
    raise RuntimeError(
        f"sampling did not finish within {max_steps} steps per row: the model draws far more events "
        "than its learned rate (a degenerate fit?)"
    )


def _step(
    tpp: NumpyTPP,
    lanes: _Lanes,
    clients: ClientTable,
    bias: np.ndarray,
    time_map: TimeMap,
    rng,
    recorder: _Recorder,
    warmup_events: float,
) -> _Lanes:
    """One event for every running row; rows past their end drop out.

    A row whose warm-up already drew WARMUP_OVERRUN times its ``warmup_events``
    (a burst) skips ahead to its kept part with the state it has.
    """
    warmed = (lanes.warm >= WARMUP_OVERRUN * warmup_events) & (lanes.tau < lanes.tau_keep)
    lanes.tau = np.where(warmed, lanes.tau_keep, lanes.tau)
    t_prev = time_map.to_spec_time(lanes.client, lanes.tau)
    position = time_map.position(t_prev)
    x = tpp.event_features(
        position, lanes.prev_gap, lanes.prev_start, lanes.gap_mean, lanes.gap_std, lanes.prev_marks,
        clients.activity, lanes.client,
    )  # fmt: skip
    lanes.h = tpp.gru_step(lanes.h, x, lanes.emb_gates)
    projected = tpp.project(lanes.h)
    # A row's start (and a skip to its kept part) is an arbitrary moment, not an event: drawing
    # an ordinary gap there would add the mean overshoot of a heavy-tailed gap to every row.
    gap = tpp.sample_gap(projected, RowBias(bias, lanes.client), rng, forward=lanes.prev_start | warmed)
    lanes.tau = lanes.tau + gap
    go = lanes.tau < lanes.tau_end
    if not go.all():
        lanes, projected, gap, t_prev = lanes.select(go), projected[go], gap[go], t_prev[go]
    t = time_map.to_spec_time(lanes.client, lanes.tau)
    # The gap as the features read it (training reads recorded gaps the same way).
    read_gap = resolved_gap(np, gap, t - t_prev, tpp.gap_resolution_s)
    marks, items = tpp.sample_marks(
        projected, RowBias(bias, lanes.client), read_gap, lanes.gap_mean, lanes.gap_std, rng
    )
    keep = lanes.tau >= lanes.tau_keep
    lanes.warm = lanes.warm + ~keep
    if keep.any():
        recorder.add(lanes.client, t, marks, items, keep)
    lanes.recent_gap = lanes.recent_gap + PACE_WEIGHT * (gap - lanes.recent_gap)
    lanes.prev_gap, lanes.prev_start, lanes.prev_marks = read_gap, np.zeros(len(gap), dtype=bool), marks
    return lanes
