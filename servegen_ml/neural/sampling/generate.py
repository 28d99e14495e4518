"""A generation spec -> canonical trace from a fitted neural state (numpy only; see segment_sampler).

Rate control: the spec's target (natural, scale:K, a constant, a curve) gives
a multiplier ``m(t) = target / natural`` on a grid of spec time, applied as a
time change (every client's rate scaled by ``m``, gaps keeping their shape, so
burstiness and client shares stay the model's own).

``natural`` and ``scale:K`` multiply the model's own rate, so they need no
estimate of it. A constant or curve target needs the *model's* natural rate,
which can differ several-fold from the rates it was trained on. It is measured
once, after training (:func:`measure_rate_curves`: the whole learned timeline
sampled at the natural rate, stored in the checkpoint as
``state.model_rate_curves``), and read at the window's timeline positions like
the empirical curves. Where it is not known in advance (``clients=new:N``, a
checkpoint saved without the stored curves) a pilot run measures it over the
window first (:func:`_pilot`, about one more sampling run).

Rows are planned on the *empirical* rates everywhere (each client at least at
its active rate): in the measurement, the pilot and the final run. The model's
rate depends a little on how far into its row an event lies (see
segment_sampler), so a measurement transfers best to rows planned the same way.
:func:`natural_rates` gives each client's natural rate over a window, which
conversation upsampling needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from servegen_ml.compose import merge_streams, segment_multipliers
from servegen_ml.core.errors import UserError
from servegen_ml.core.spec import ClientSpec, GenerationSpec, RateSpec
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
MAX_WARMUP_S = 6 * 3600.0
MIN_GAP_STD = 0.05  # floor of a drawn client's log-gap std (a population draw can land near 0)
# The model is taken to send at least 1/MAX_SLOWDOWN of the rate its rows are planned on: a model that
# sends (almost) nothing misses the target instead of being sampled for an unbounded natural time.
MAX_SLOWDOWN = 16.0
PILOT_MIN_EVENTS = 20_000  # a pilot draws the target's number of events, but at least this many
# Measurement after training: passes over the learned timeline until there are MEASURE_MIN_PASSES and
# the aggregate holds MEASURE_EVENTS_PER_BIN events per rate bin on average; at most MEASURE_MAX_PASSES,
# and none that would take the total past MEASURE_MAX_EVENTS (the first always runs: a 25M-request
# trace gets one). Why passes and not only events: bursty clients clump events, so one pass's
# aggregate in a 10-minute bin varies by 5-6 % (median over bins; multimodal and reasoning checkpoints,
# 5k-30k events per bin) where a Poisson count would vary by 1 %. Four passes halve that; 1,000 events
# per bin (3 % were they Poisson) is the floor for small traces, whose passes are cheap.
MEASURE_MIN_PASSES = 4
MEASURE_EVENTS_PER_BIN = 1_000
MEASURE_MAX_PASSES = 16
MEASURE_MAX_EVENTS = 8_000_000
MEASURE_CHUNK_S = 3600.0  # the timeline is sampled in chunks of about this many seconds of whole rate bins


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
    setup = _setup(state, tpp, spec, rng, segment_events, warmup_events, selected)
    natural = setup.plan.sum(0)  # natural and scale:K do not use it
    if spec.rate.kind in ("constant", "curve"):
        natural = np.maximum(_natural(setup, spec.rate, rng).sum(0), natural / MAX_SLOWDOWN)
    edges = setup.sampler.edges
    multiplier = segment_multipliers(spec.rate, edges[:-1], edges[1:], natural)
    events = setup.sampler.run(setup.plan, multiplier, rng)
    return _assemble(events, setup.names, state)


def natural_rates(
    state: NeuralState,
    tpp: NumpyTPP,
    spec: GenerationSpec,
    rng: np.random.Generator,
    segment_events: int = 256,
    warmup_events: int = 32,
    selected: tuple | None = None,
) -> pd.Series:
    """Client id -> the model's own mean req/s over the spec's window (its rate target ignored).

    Read from the stored model curves for known clients; otherwise measured by
    the pilot run of :func:`sample_trace` (sized by the spec's target, so it
    costs about one sampling run of the spec). For ``clients=new:N`` the N
    clients are drawn from ``rng`` like ``sample_trace`` draws them (the same
    clients only from the same generator state).
    """
    setup = _setup(state, tpp, spec, rng, segment_events, warmup_events, selected)
    natural = _natural(setup, spec.rate, rng)  # (C, cells)
    width = np.diff(setup.sampler.edges)
    return pd.Series((natural * width).sum(1) / spec.duration_s, index=setup.names)


def measure_rate_curves(
    state: NeuralState, tpp: NumpyTPP, rng: np.random.Generator, segment_events: int, warmup_events: int
) -> np.ndarray:
    """(C, bins) float32: the model's own req/s per known client and rate bin over the learned timeline.

    Samples all clients over ``[0, span_s)`` at the natural rate, an hour or so
    at a time, in passes (see MEASURE_MIN_PASSES); bins as ``state.rate_curves``.
    """
    n_clients, n_bins = state.rate_curves.shape
    chunk_s = max(1, round(MEASURE_CHUNK_S / state.rate_bin_s)) * state.rate_bin_s
    starts = np.arange(0.0, state.span_s, chunk_s)
    counts = np.zeros(n_clients * n_bins)
    passes = 0
    while True:
        passes += 1
        for start_s in tqdm(starts, desc=f"model rate curves, pass {passes}", unit="chunk", disable=None):
            spec = GenerationSpec.from_values(
                duration_s=min(chunk_s, state.span_s - start_s), start_s=start_s
            )
            setup = _setup(state, tpp, spec, rng, segment_events, warmup_events)
            # The sampling step's matrix products are small: one BLAS thread is faster (as in sampling).
            with threadpool_limits(limits=1, user_api="blas"):
                events = setup.sampler.run(setup.plan, np.ones(setup.plan.shape[1]), rng)
            b = np.clip(((start_s + events.t_s) // state.rate_bin_s).astype(np.int64), 0, n_bins - 1)
            counts += np.bincount(events.client * n_bins + b, minlength=len(counts))
        total, per_pass = counts.sum(), counts.sum() / passes
        enough = passes >= MEASURE_MIN_PASSES and total >= MEASURE_EVENTS_PER_BIN * n_bins
        if enough or passes >= MEASURE_MAX_PASSES or total + per_pass > MEASURE_MAX_EVENTS:
            break
    width = np.clip(state.span_s - np.arange(n_bins) * state.rate_bin_s, 1e-9, state.rate_bin_s)
    return (counts.reshape(n_clients, n_bins) / (passes * width)).astype(np.float32)


@dataclass
class _Setup:
    names: list[str]
    plan: (
        np.ndarray
    )  # (C, cells) req/s the rows are planned on: the empirical rates, at least the active rate
    stored: np.ndarray | None  # (C, cells) the model's natural req/s from the stored curves (None: not known)
    cell_bin: (
        np.ndarray
    )  # (cells,) pilot bin of each grid cell: runs of cells in one rate bin of the timeline
    sampler: _Sampler


def _setup(state, tpp, spec: GenerationSpec, rng, segment_events, warmup_events, selected=None) -> _Setup:
    table, names, flat_rate, known = selected or select_clients(state, spec.clients, rng)
    edges = np.linspace(
        0.0, spec.duration_s, int(np.clip(np.ceil(spec.duration_s / GRID_STEP_S), 1, MAX_GRID_CELLS)) + 1
    )
    probe = TimeMap(edges, edges, spec.start_s, state.span_s)
    position = probe.position(0.5 * (edges[:-1] + edges[1:]))
    stored = None
    if known is None:
        plan = np.repeat(flat_rate[:, None], len(edges) - 1, axis=1)
    else:
        empirical = _curve_rates(state.rate_curves, state.rate_bin_s, known, position)
        plan = np.maximum(empirical, _active_rates(state.rate_curves[known])[:, None])
        if state.model_rate_curves is not None:
            stored = _curve_rates(state.model_rate_curves, state.rate_bin_s, known, position)
    # Pilot bins follow the rate bins of the learned timeline: the plan and the model's activity
    # features are constant within one, so the model's rate mostly changes between them.
    rate_bin = np.floor(position / state.rate_bin_s)
    cell_bin = np.concatenate([[0], np.cumsum(np.diff(rate_bin) != 0)])
    sampler = _Sampler(tpp, table, edges, spec.start_s, state.span_s, segment_events, warmup_events)
    return _Setup(names, plan, stored, cell_bin, sampler)


def _natural(setup: _Setup, rate: RateSpec, rng) -> np.ndarray:
    """(C, cells) the model's natural req/s per client: the stored curves, or else a pilot run."""
    if setup.stored is not None:
        return setup.stored
    edges = setup.sampler.edges
    width = np.diff(edges)
    planned = float((setup.plan.sum(0) * width).sum())  # events at the natural rate, were the plan right
    if rate.kind in ("constant", "curve"):
        # With a natural rate of 1 req/s the multiplier is the target rate itself.
        wanted = float((segment_multipliers(rate, edges[:-1], edges[1:], np.ones(len(width))) * width).sum())
    else:
        wanted = planned
    return _pilot(setup, max(wanted, PILOT_MIN_EVENTS) / max(planned, 1e-12), rng)


def _pilot(setup: _Setup, k: float, rng) -> np.ndarray:
    """(C, cells) natural req/s per client, measured over the window at a constant multiplier ``k``.

    ``k`` is chosen to draw about the wanted number of events were the plan
    right. Why a full-size pilot rather than a thinner one: less natural time
    means fewer independent rows, and bursty clients then make the count far
    noisier than its number of events suggests.
    """
    sampler = setup.sampler
    edges, width = sampler.edges, np.diff(sampler.edges)
    events = sampler.run(setup.plan, np.full(len(width), k), rng)
    cell_bin = setup.cell_bin
    n_bins, n_clients = int(cell_bin[-1]) + 1, len(setup.plan)
    cell = np.clip(np.searchsorted(edges, events.t_s, side="right") - 1, 0, len(width) - 1)
    counts = np.bincount(events.client * n_bins + cell_bin[cell], minlength=n_clients * n_bins)
    natural_s = k * np.bincount(cell_bin, weights=width, minlength=n_bins)  # natural time per pilot bin
    return (counts.reshape(n_clients, n_bins) / natural_s)[:, cell_bin]


class _Sampler:
    def __init__(self, tpp, table, edges, start_s, span_s, segment_events, warmup_events):
        self.tpp, self.table, self.edges = tpp, table, edges
        self.start_s, self.span_s = start_s, span_s
        self.segment_events, self.warmup_events = segment_events, warmup_events

    def run(self, plan: np.ndarray, multiplier: np.ndarray, rng) -> SampledEvents:
        """Events of all clients; rows planned on ``plan`` (C, cells) req/s; multiplier (cells,)."""
        d_tau = multiplier * np.diff(self.edges)
        tau_grid = np.concatenate([[0.0], np.cumsum(d_tau)])
        expected = np.concatenate([np.zeros((len(plan), 1)), np.cumsum(plan * d_tau, axis=1)], axis=1)
        rows = plan_rows(expected, tau_grid, self.segment_events, self.warmup_events, MAX_WARMUP_S)
        time_map = TimeMap(tau_grid, self.edges, self.start_s, self.span_s)
        max_steps = 100 * (self.segment_events + self.warmup_events) + 10_000
        tail_events = self.segment_events
        events = sample_rows(
            self.tpp,
            self.table,
            rows,
            time_map,
            rng,
            max_steps,
            self.warmup_events,
            MAX_WARMUP_S,
            tail_events,
        )
        return _subset(events, events.t_s < self.edges[-1])


def select_clients(state: NeuralState, clients: ClientSpec, rng):
    """(ClientTable, output ids, flat natural rate (C,), known client indices or None for new clients)."""
    w = state.weights
    if clients.kind in ("all", "list"):
        if clients.kind == "all":
            idx = np.arange(len(state.client_ids))
        else:
            index = {c: i for i, c in enumerate(state.client_ids)}
            unknown = [c for c in clients.ids if c not in index]
            if unknown:
                raise UserError(
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


def _curve_rates(curves: np.ndarray, bin_s: float, idx: np.ndarray, position_s: np.ndarray) -> np.ndarray:
    """(C, cells) req/s of known clients ``idx`` from per-bin ``curves`` at learned-timeline positions."""
    b = np.clip((position_s // bin_s).astype(np.int64), 0, curves.shape[1] - 1)
    return curves[idx][:, b].astype(np.float64)


def _active_rates(curves: np.ndarray) -> np.ndarray:
    """(C,) each client's mean req/s over the rate bins where it sent anything."""
    curves = curves.astype(np.float64)
    active = curves > 0
    return np.where(active.any(1), curves.sum(1) / np.maximum(active.sum(1), 1), 0.0)


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
