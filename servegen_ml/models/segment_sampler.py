"""Batched sampling of many client streams at once, in numpy.

Why segments: a heavy client sends ~100k requests an hour, and each event of a
stream depends on the one before, so one chain per client would need ~100k
sequential steps. Instead every client's time range is cut into segments of
about ``segment_events`` expected events and every segment is a separate batch
row, all advanced together one event per step. Each row starts from the
client's initial state and a start token ``warmup_events`` expected events
before its segment and discards those warm-up events, so the recurrent state
has settled when the kept part begins. The approximation: history older than
the warm-up does not reach across segment borders (time-of-day effects still
do, through the time features).

Time: rows live in *natural* time ``tau`` (the model's own clock). Rate control
maps it to spec time ``t`` through ``tau(t) = integral of m(t)``, where ``m`` is
the rate multiplier: a client's events arrive ``m`` times as often while its
gaps keep their shape (burstiness), and time-of-day features use real time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servegen_ml.generators.spec import wrap_period, wrap_time
from servegen_ml.models.numpy_tpp import NumpyTPP


@dataclass
class ClientTable:
    """Per sampled client: embedding (C, E) and log-gap normalizer (C,), (C,)."""

    embedding: np.ndarray
    gap_mean: np.ndarray
    gap_std: np.ndarray


@dataclass
class TimeMap:
    """Natural time <-> spec time (seconds since the spec start) <-> learned-timeline position."""

    tau_grid: np.ndarray  # (G,) natural time at t_grid, non-decreasing, tau(0) = 0
    t_grid: np.ndarray  # (G,) spec time, 0 .. duration_s
    start_s: float
    span_s: float

    def to_spec_time(self, tau: np.ndarray) -> np.ndarray:
        """Warm-up before the spec start (tau < 0) runs at the natural rate."""
        return np.where(tau < 0, tau, np.interp(tau, self.tau_grid, self.t_grid))

    def position(self, t: np.ndarray) -> np.ndarray:
        """Learned-timeline position (time-of-day features, rate curves) of spec times."""
        p = self.start_s + np.asarray(t, dtype=np.float64)
        period = wrap_period(self.span_s)
        return np.where(p >= 0, wrap_time(np.maximum(p, 0.0), self.span_s), np.mod(p, period))


@dataclass
class Rows:
    """Batch rows: a client, where its warm-up begins, where kept events begin, where it ends (natural s)."""

    client: np.ndarray
    tau_begin: np.ndarray
    tau_keep: np.ndarray
    tau_end: np.ndarray


@dataclass
class SampledEvents:
    """Kept events, unsorted: row, spec time, marks (see NumpyTPP.sample_marks) and flat items per modality."""

    row: np.ndarray
    t_s: np.ndarray
    marks: dict[str, np.ndarray]
    items: dict[str, np.ndarray]


def plan_rows(
    expected: np.ndarray, tau_grid: np.ndarray, segment_events: float, warmup_events: float, max_warmup_s: float
) -> Rows:
    """Cut each client's natural-time range into rows of ~``segment_events`` expected events.

    expected (C, G): each client's cumulative expected events at ``tau_grid``.
    """
    clients, begins, keeps, ends = [], [], [], []
    tau_end = tau_grid[-1]
    for c in range(expected.shape[0]):
        total = expected[c, -1]
        n_rows = max(1, int(np.ceil(total / segment_events)))
        marks = np.arange(1, n_rows) * (total / n_rows)
        cuts = np.concatenate([[0.0], np.interp(marks, expected[c], tau_grid), [tau_end]])
        length = np.diff(cuts)
        rate = np.maximum(total / n_rows, 1.0) / np.maximum(length, 1e-9)
        warmup = np.minimum(warmup_events / rate, max_warmup_s)
        clients.append(np.full(n_rows, c))
        keeps.append(cuts[:-1])
        ends.append(cuts[1:])
        begins.append(cuts[:-1] - warmup)
    cat = np.concatenate
    return Rows(cat(clients), cat(begins), cat(keeps), cat(ends))


class _Recorder:
    """Collects kept events step by step; one concatenation at the end."""

    def __init__(self, modalities):
        self.rows, self.times, self.marks, self.items = [], [], [], {m: [] for m in modalities}

    def add(self, rows, t, marks, items, keep):
        self.rows.append(rows[keep])
        self.times.append(t[keep])
        self.marks.append({k: v[keep] for k, v in marks.items()})
        for m, tokens in items.items():
            self.items[m].append(tokens[np.repeat(keep, marks[f"{m}_count"])])

    def result(self, mark_names) -> SampledEvents:
        if not self.rows:
            empty = np.zeros(0)
            return SampledEvents(empty.astype(np.int64), empty, {k: empty.astype(np.int64) for k in mark_names}, {m: empty.astype(np.int64) for m in self.items})
        marks = {k: np.concatenate([s[k] for s in self.marks]) for k in self.marks[0]}
        items = {m: np.concatenate(v).astype(np.int64) for m, v in self.items.items()}
        return SampledEvents(np.concatenate(self.rows), np.concatenate(self.times), marks, items)


def sample_rows(
    tpp: NumpyTPP, clients: ClientTable, rows: Rows, time_map: TimeMap, rng: np.random.Generator, max_steps: int
) -> SampledEvents:
    """Advance all rows one event per step until each passes its end; keep events inside [tau_keep, tau_end)."""
    h, emb_gates = tpp.client_rows(clients.embedding[rows.client])
    gap_mean = clients.gap_mean[rows.client].astype(np.float64)
    gap_std = clients.gap_std[rows.client].astype(np.float64)
    alive = np.arange(len(rows.client))
    tau = rows.tau_begin.astype(np.float64).copy()
    n = len(alive)
    prev_gap, prev_start = np.zeros(n), np.ones(n, dtype=bool)
    prev_marks = _zero_marks(tpp, n)
    recorder = _Recorder(tpp.layout.modalities)
    for _ in range(max_steps):
        if alive.size == 0:
            return recorder.result(prev_marks.keys())
        x = tpp.event_features(time_map.position(time_map.to_spec_time(tau)), prev_gap, prev_start, gap_mean, gap_std, prev_marks)
        h = tpp.gru_step(h, x, emb_gates)
        projected = tpp.project(h)
        gap = tpp.sample_gap(projected, gap_mean, gap_std, rng)
        tau = tau + gap
        go = tau < rows.tau_end[alive]
        if not go.all():
            alive, h, projected, gap, tau = alive[go], h[go], projected[go], gap[go], tau[go]
            emb_gates, gap_mean, gap_std = emb_gates[go], gap_mean[go], gap_std[go]
        marks, items = tpp.sample_marks(projected, gap, gap_mean, gap_std, rng)
        keep = tau >= rows.tau_keep[alive]
        if keep.any():
            recorder.add(alive, time_map.to_spec_time(tau), marks, items, keep)
        prev_gap, prev_start, prev_marks = gap, np.zeros(len(alive), dtype=bool), marks
    raise RuntimeError(
        f"sampling did not finish within {max_steps} steps per row: the model draws far more events "
        "than its learned rate (a degenerate fit?)"
    )


def _zero_marks(tpp: NumpyTPP, n: int) -> dict[str, np.ndarray]:
    names = ["input", "output"] + (["reasoning"] if tpp.layout.has_reasoning else [])
    for m in tpp.layout.modalities:
        names += [f"{m}_count", f"{m}_item_log"]
    return {k: np.zeros(n) for k in names}
