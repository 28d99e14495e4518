"""A generation spec -> canonical trace from a fitted neural state (numpy only; see segment_sampler).

Rate control: the spec's target (natural, scale:K, a constant, a curve) gives
a multiplier ``m(t) = target / natural`` on a grid of spec time, applied as a
time change (every client's rate scaled by ``m``, gaps keeping their shape).
The natural aggregate rate of known clients is their empirical rate curve at
that point of the learned timeline. New clients (``clients=new:N``) are drawn
from the client population; for a constant or curve target their natural rate
is measured by a pilot run at the natural rate, since it is only known by sampling.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from servegen_ml.compose import merge_streams, segment_multipliers
from servegen_ml.generators.spec import ClientSpec, GenerationSpec
from servegen_ml.models.numpy_tpp import NumpyTPP
from servegen_ml.models.segment_sampler import ClientTable, SampledEvents, TimeMap, plan_rows, sample_rows
from servegen_ml.models.state import NeuralState

GRID_STEP_S = 1.0  # resolution of the rate-control time change
MAX_GRID_CELLS = 20_000
PILOT_BIN_S = 60.0  # resolution of a pilot run's rate estimate
MAX_WARMUP_S = 6 * 3600.0
MIN_GAP_STD = 0.05  # floor of a drawn client's log-gap std (a population draw can land near 0)


def sample_trace(
    state: NeuralState,
    tpp: NumpyTPP,
    spec: GenerationSpec,
    rng: np.random.Generator,
    segment_events: int,
    warmup_events: int,
) -> pd.DataFrame:
    table, names, flat_rate, known = _select_clients(state, spec.clients, rng)
    active_rate = flat_rate if known is None else _active_rates(state, known)
    edges = np.linspace(
        0.0, spec.duration_s, int(np.clip(np.ceil(spec.duration_s / GRID_STEP_S), 1, MAX_GRID_CELLS)) + 1
    )
    probe = TimeMap(edges, edges, spec.start_s, state.span_s)
    if known is not None:
        natural = _curve_rates(state, known, probe.position(0.5 * (edges[:-1] + edges[1:])))
    else:
        natural = np.repeat(flat_rate[:, None], len(edges) - 1, axis=1)
    sampler = _Sampler(tpp, table, active_rate, edges, spec.start_s, state.span_s, segment_events, warmup_events)
    natural_total = natural.sum(0)
    if known is None and spec.rate.kind in ("constant", "curve"):
        natural_total = sampler.pilot_rate(natural, rng)
    multiplier = segment_multipliers(spec.rate, edges[:-1], edges[1:], natural_total)
    events = sampler.run(natural, multiplier, rng)
    return _assemble(events, names, state)


class _Sampler:
    def __init__(self, tpp, table, active_rate, edges, start_s, span_s, segment_events, warmup_events):
        self.tpp, self.table, self.active_rate, self.edges = tpp, table, active_rate, edges
        self.start_s, self.span_s = start_s, span_s
        self.segment_events, self.warmup_events = segment_events, warmup_events

    def run(self, natural: np.ndarray, multiplier: np.ndarray, rng) -> SampledEvents:
        """Events of all clients; natural (C, cells) req/s, multiplier (cells,)."""
        d_tau = multiplier * np.diff(self.edges)
        tau_grid = np.concatenate([[0.0], np.cumsum(d_tau)])
        # Rows are sized as if each client were at least at its active rate: where the empirical
        # curve says "quiet" but the model still sends, no single row has to carry a long stream.
        density = np.maximum(natural, self.active_rate[:, None])
        expected = np.concatenate([np.zeros((len(natural), 1)), np.cumsum(density * d_tau, axis=1)], axis=1)
        rows = plan_rows(expected, tau_grid, self.segment_events, self.warmup_events, MAX_WARMUP_S)
        time_map = TimeMap(tau_grid, self.edges, self.start_s, self.span_s)
        max_steps = 100 * (self.segment_events + self.warmup_events) + 10_000
        tail_events = self.segment_events
        events = sample_rows(
            self.tpp, self.table, rows, time_map, rng, max_steps, self.warmup_events, MAX_WARMUP_S, tail_events
        )
        return _subset(events, events.t_s < self.edges[-1])

    def pilot_rate(self, natural: np.ndarray, rng) -> np.ndarray:
        """Aggregate req/s per grid cell measured by sampling at the natural rate."""
        events = self.run(natural, np.ones(natural.shape[1]), rng)
        duration = self.edges[-1]
        n_bins = max(1, int(np.ceil(duration / PILOT_BIN_S)))
        width = duration / n_bins
        hist = np.bincount(np.minimum((events.t_s / width).astype(np.int64), n_bins - 1), minlength=n_bins) / width
        mid = 0.5 * (self.edges[:-1] + self.edges[1:])
        return hist[np.minimum((mid / width).astype(np.int64), n_bins - 1)]


def _select_clients(state: NeuralState, clients: ClientSpec, rng):
    """(ClientTable, output ids, flat natural rate (C,), known client indices or None for new clients)."""
    w = state.weights
    if clients.kind in ("all", "list"):
        if clients.kind == "all":
            idx = np.arange(len(state.client_ids))
        else:
            index = {c: i for i, c in enumerate(state.client_ids)}
            unknown = [c for c in clients.ids if c not in index]
            if unknown:
                raise ValueError(
                    f"clients: unknown client ids {unknown[:5]}; this model has {len(index)} clients "
                    f"(e.g. {', '.join(state.client_ids[:5])})"
                )
            idx = np.array([index[c] for c in clients.ids], dtype=np.int64)
        table = ClientTable(
            w["embedding.weight"][idx], w["gap_log_mean"][idx], w["gap_log_std"][idx], w["activity"][idx]
        )
        names = [state.client_ids[i] for i in idx]
        return table, names, None, idx
    vec = state.population.sample(clients.n, rng)
    e = state.embedding_dim
    activity = state.flat_activity(vec[:, e + 2])
    table = ClientTable(vec[:, :e], vec[:, e], np.maximum(vec[:, e + 1], MIN_GAP_STD), activity)
    return table, [f"new-{i}" for i in range(clients.n)], np.exp(vec[:, e + 2]), None


def _curve_rates(state: NeuralState, idx: np.ndarray, position_s: np.ndarray) -> np.ndarray:
    """(C, cells) empirical req/s of known clients at learned-timeline positions."""
    n_bins = state.rate_curves.shape[1]
    b = np.clip((position_s // state.rate_bin_s).astype(np.int64), 0, n_bins - 1)
    return state.rate_curves[idx][:, b].astype(np.float64)


def _active_rates(state: NeuralState, idx: np.ndarray) -> np.ndarray:
    """(C,) each known client's mean req/s over the rate bins where it sent anything."""
    curves = state.rate_curves[idx].astype(np.float64)
    active = curves > 0
    return np.where(active.any(1), curves.sum(1) / np.maximum(active.sum(1), 1), 0.0)


def _subset(events: SampledEvents, keep: np.ndarray) -> SampledEvents:
    items = {}
    for m, tokens in events.items.items():
        items[m] = tokens[np.repeat(keep, events.marks[f"{m}_count"])]
    return SampledEvents(events.client[keep], events.t_s[keep], {k: v[keep] for k, v in events.marks.items()}, items)


def _assemble(events: SampledEvents, names: list[str], state: NeuralState) -> pd.DataFrame:
    layout = state.layout
    base = events.marks["input"].astype(np.int64)
    ints = {"output_tokens": events.marks["output"].astype(np.int64)}
    lists = {}
    item_total = np.zeros(len(base), dtype=np.int64)
    for m in layout.modalities:
        counts = events.marks[f"{m}_count"].astype(np.int64)
        lists[f"{m}_tokens"] = (counts, events.items[m])
        owner = np.repeat(np.arange(len(base)), counts)
        item_total += np.bincount(owner, weights=events.items[m], minlength=len(base)).astype(np.int64)
    for m in layout.empty_modalities:
        lists[f"{m}_tokens"] = (np.zeros(len(base), dtype=np.int64), np.zeros(0, dtype=np.int64))
    ints["input_tokens"] = base + item_total if layout.items_in_input else base
    if layout.has_text_tokens:
        ints["text_tokens"] = base
    if layout.has_reasoning:
        ints["reasoning_tokens"] = events.marks["reasoning"].astype(np.int64)
    return merge_streams(events.t_s, events.client, names, ints, lists)
