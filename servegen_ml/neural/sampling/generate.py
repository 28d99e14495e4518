"""A generation spec -> canonical trace from a fitted neural state (numpy only; see segment_sampler).

The model's natural rate is known exactly, without sampling: each client's
rate level (:mod:`servegen_ml.neural.rate_level`) integrated over the window,
since the point process's gaps have mean 1 in the level's unit time. Rate
control: the spec's target (natural, scale:K, a constant, a curve) gives a
multiplier ``m(t) = target / natural`` on a grid of spec time that scales
every client's level, gaps keeping their shape in unit time (so burstiness
and client shares stay the model's own). :func:`natural_rates` gives each
client's natural rate over a window, which conversation upsampling needs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from servegen_ml.compose import merge_streams, segment_multipliers
from servegen_ml.core.clients import source_clients
from servegen_ml.core.spec import ClientSpec, GenerationSpec
from servegen_ml.neural.rate_level import cumulative_table, unit_time
from servegen_ml.neural.sampling.numpy_tpp import NumpyTPP
from servegen_ml.neural.sampling.segment_sampler import (
    ClientTable,
    SampledEvents,
    TimeMap,
    plan_rows,
    sample_rows,
)
from servegen_ml.neural.state import NeuralState

GRID_STEP_S = 1.0  # resolution of the rate-control time change
MAX_GRID_CELLS = 20_000


def sample_trace(
    state: NeuralState,
    tpp: NumpyTPP,
    spec: GenerationSpec,
    rng: np.random.Generator,
    segment_events: int,
    warmup_events: int,
    selected: tuple | None = None,
) -> pd.DataFrame:
    """``selected``: :func:`select_clients`' result drawn once for a whole spec (else drawn here)."""
    window = _window(state, tpp, spec, rng, selected)
    width = np.diff(window.edges)
    multiplier = segment_multipliers(
        spec.rate, window.edges[:-1], window.edges[1:], window.units.sum(0) / width
    )
    events = _run(tpp, window, multiplier, spec, rng, segment_events, warmup_events)
    return _assemble(events, window.names, state)


def natural_rates(
    state: NeuralState,
    tpp: NumpyTPP,
    spec: GenerationSpec,
    rng: np.random.Generator,
    selected: tuple | None = None,
) -> pd.Series:
    """Client id -> the model's own mean req/s over the spec's window (its rate target ignored).

    Exact: the clients' rate level integrated over the window. For ``clients=new:N``
    the N clients are drawn from ``rng`` like ``sample_trace`` draws them (the same
    clients only from the same generator state).
    """
    window = _window(state, tpp, spec, rng, selected)
    return pd.Series(window.units.sum(1) / spec.duration_s, index=window.names)


class _Window:
    """The sampled clients and their expected events per grid cell of the spec window at the natural rate."""

    def __init__(self, table: ClientTable, names: list[str], edges: np.ndarray, units: np.ndarray):
        self.table, self.names, self.edges, self.units = table, names, edges, units


def _window(state: NeuralState, tpp: NumpyTPP, spec: GenerationSpec, rng, selected=None) -> _Window:
    table, names = selected or select_clients(state, spec.clients, rng)
    level = table.level
    cells = int(np.clip(np.ceil(spec.duration_s / GRID_STEP_S), 1, MAX_GRID_CELLS))
    edges = np.linspace(0.0, spec.duration_s, cells + 1)
    bin_s, span_s = tpp.activity_bin_s, tpp.activity_span_s
    cum = cumulative_table(level, bin_s, span_s)
    client = np.arange(len(level))[:, None]
    u = unit_time(np, level, cum, client, spec.start_s + edges[None, :], bin_s, span_s)
    return _Window(table, names, edges, np.diff(u, axis=1))


def _run(tpp, window: _Window, multiplier, spec, rng, segment_events, warmup_events) -> SampledEvents:
    """Events of all clients, each cell's expected events scaled by ``multiplier`` (cells,)."""
    scaled = window.units * multiplier
    unit_grid = np.concatenate([np.zeros((len(scaled), 1)), np.cumsum(scaled, axis=1)], axis=1)
    edges = window.edges
    time_map = TimeMap(unit_grid, edges, scaled[:, 0] / (edges[1] - edges[0]), spec.start_s)
    rows = plan_rows(unit_grid[:, -1], segment_events, warmup_events)
    max_steps = 100 * (segment_events + warmup_events) + 10_000
    events = sample_rows(
        tpp, window.table, rows, time_map, rng, max_steps, warmup_events, tail_events=segment_events
    )
    return _subset(events, events.t_s < edges[-1])


def select_clients(state: NeuralState, clients: ClientSpec, rng):
    """(ClientTable, output ids): the fitted clients each output client copies (``new:N`` copies a
    random set of real clients, :func:`~servegen_ml.core.clients.source_clients`)."""
    idx, names = source_clients(state.client_ids, clients, rng)
    w = state.weights
    table = ClientTable(
        w["embedding.weight"][idx],
        w["gap_log_mean"][idx],
        w["gap_log_std"][idx],
        w["activity"][idx],
        np.asarray(w["rate_level"], dtype=np.float64)[idx],
        w["heads.client_offsets.weight"][idx],
    )
    return table, names


def _subset(events: SampledEvents, keep: np.ndarray) -> SampledEvents:
    items = {}
    for m, tokens in events.items.items():
        items[m] = tokens[np.repeat(keep, events.marks[f"{m}_count"])]
    return SampledEvents(
        events.client[keep], events.t_s[keep], {k: v[keep] for k, v in events.marks.items()}, items
    )


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
