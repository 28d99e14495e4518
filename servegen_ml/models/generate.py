"""A generation spec -> canonical trace from a fitted neural state (numpy only; see segment_sampler).

Rate control: the spec's target (natural, scale:K, a constant, a curve) gives
a multiplier ``m(t) = target / natural`` on a grid of spec time, applied as a
time change (every client's rate scaled by ``m``, gaps keeping their shape, so
burstiness and client shares stay the model's own).

``natural`` and ``scale:K`` multiply the model's own rate, so they need no
estimate of it. For a constant or curve target, ``natural`` must be the
*model's* aggregate rate, which can differ a lot from the rates it was trained
on (e.g. 1.5x in a quiet hour), so it is measured by a pilot run
(:func:`_calibrate`). A prior gives a first multiplier: the known clients'
empirical rate curves (floored where all are idle, since the model may send
there), or a new client's drawn mean rate. A small scout run
(``SCOUT_EVENTS``) measures how far off the prior is over the window, then the
pilot samples the window at the multiplier that should give ``PILOT_SHARE`` of
the target's events (at least ``PILOT_MIN_EVENTS``), so it costs about one
more sampling run. Why not a cheaper, thinner pilot: a run with less natural
time has fewer independent rows, and bursty clients then make its count far
noisier than the events alone suggest.

The pilot's counts per pilot bin — the cells within one rate bin of the
learned timeline, where the prior and the model's activity features are
constant — give each bin's ratio of model to prior rate, shrunk towards the
window's ratio (a gamma prior worth ``PRIOR_PSEUDO_EVENTS`` events), so a
quiet or bursty bin cannot give a zero or infinite multiplier (and a model
sending less than ``1 / MAX_SLOWDOWN`` of the prior misses the target instead
of running up the cost). The final run uses ``prior x ratio`` as the natural
rate, with rows planned as in the pilot.
The same pilot gives each client's natural rate over a window
(:func:`natural_rates`), which conversation upsampling needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from servegen_ml.compose import merge_streams, segment_multipliers
from servegen_ml.generators.spec import ClientSpec, GenerationSpec, RateSpec
from servegen_ml.models.numpy_tpp import NumpyTPP
from servegen_ml.models.segment_sampler import ClientTable, SampledEvents, TimeMap, plan_rows, sample_rows
from servegen_ml.models.state import NeuralState

GRID_STEP_S = 1.0  # resolution of the rate-control time change
MAX_GRID_CELLS = 20_000
MAX_WARMUP_S = 6 * 3600.0
MIN_GAP_STD = 0.05  # floor of a drawn client's log-gap std (a population draw can land near 0)
PILOT_SHARE = 1.0  # a pilot draws about this share of the target's events ...
PILOT_MIN_EVENTS = 20_000  # ... but at least this many
SCOUT_EVENTS = 2_000  # expected events of the run that sizes the pilot
PRIOR_PSEUDO_EVENTS = 20.0  # weight of the window's model/prior ratio in each bin's estimate
MAX_BIN_SPEEDUP = 32.0  # a bin's multiplier is at most this many times the window-level one
# The model is taken to send at least 1/MAX_SLOWDOWN of the prior's rate: a model that sends (almost)
# nothing misses the target instead of being sampled for an unbounded natural time.
MAX_SLOWDOWN = 16.0
PRIOR_FLOOR = 0.05  # the prior aggregate rate is at least this share of its window mean


def sample_trace(
    state: NeuralState,
    tpp: NumpyTPP,
    spec: GenerationSpec,
    rng: np.random.Generator,
    segment_events: int,
    warmup_events: int,
) -> pd.DataFrame:
    setup = _setup(state, tpp, spec, rng, segment_events, warmup_events)
    plan, natural = setup.prior, setup.prior.sum(0)
    if spec.rate.kind in ("constant", "curve"):
        pilot = _calibrate(setup, spec.rate, rng)
        # Rows are planned as in the pilot, so they hold as many events as the pilot's did: the
        # model's rate depends a little on how far into its row an event is (see segment_sampler).
        plan, natural = pilot.plan, pilot.natural.sum(0)
    edges = setup.sampler.edges
    multiplier = segment_multipliers(spec.rate, edges[:-1], edges[1:], natural)
    events = setup.sampler.run(plan, multiplier, rng)
    return _assemble(events, setup.names, state)


def natural_rates(
    state: NeuralState,
    tpp: NumpyTPP,
    spec: GenerationSpec,
    rng: np.random.Generator,
    segment_events: int = 256,
    warmup_events: int = 32,
) -> pd.Series:
    """Client id -> the model's own mean req/s over the spec's window (its rate target ignored).

    Measured by the pilot run of :func:`sample_trace` (sized by the spec's
    target, so it costs at most about one sampling run of the spec); the
    sum over clients is the natural aggregate rate ``sample_trace`` calibrates on.
    For ``clients=new:N`` the N clients are drawn from ``rng`` like
    ``sample_trace`` draws them (the same clients only from the same generator state).
    """
    setup = _setup(state, tpp, spec, rng, segment_events, warmup_events)
    rate = spec.rate if spec.rate.kind in ("constant", "curve") else RateSpec()
    pilot = _calibrate(setup, rate, rng)
    width = np.diff(setup.sampler.edges)
    per_bin = np.bincount(setup.cell_bin, weights=pilot.natural.sum(0) * width, minlength=pilot.n_bins)  # requests
    counts = pilot.client_counts  # (C, bins)
    seen = counts.sum(0)
    window_share = counts.sum(1) / seen.sum() if seen.sum() > 0 else setup.prior.sum(1) / setup.prior.sum()
    share = np.where(seen > 0, counts / np.maximum(seen, 1), window_share[:, None])
    return pd.Series((share * per_bin).sum(1) / spec.duration_s, index=setup.names)


@dataclass
class _Setup:
    names: list[str]
    prior: np.ndarray  # (C, cells) req/s each client is expected to send before any pilot: the rate-control prior
    cell_bin: np.ndarray  # (cells,) pilot bin of each grid cell: runs of cells in one rate bin of the timeline
    sampler: _Sampler


def _setup(state, tpp, spec: GenerationSpec, rng, segment_events, warmup_events) -> _Setup:
    table, names, flat_rate, known = _select_clients(state, spec.clients, rng)
    active_rate = flat_rate if known is None else _active_rates(state, known)
    edges = np.linspace(
        0.0, spec.duration_s, int(np.clip(np.ceil(spec.duration_s / GRID_STEP_S), 1, MAX_GRID_CELLS)) + 1
    )
    probe = TimeMap(edges, edges, spec.start_s, state.span_s)
    position = probe.position(0.5 * (edges[:-1] + edges[1:]))
    if known is not None:
        prior = _curve_rates(state, known, position)
    else:
        prior = np.repeat(flat_rate[:, None], len(edges) - 1, axis=1)
    # Pilot bins follow the rate bins of the learned timeline: the prior and the model's activity
    # features are constant within one, so the model/prior ratio mostly changes between them.
    rate_bin = np.floor(position / state.rate_bin_s)
    cell_bin = np.concatenate([[0], np.cumsum(np.diff(rate_bin) != 0)])
    sampler = _Sampler(tpp, table, active_rate, edges, spec.start_s, state.span_s, segment_events, warmup_events)
    return _Setup(names, prior, cell_bin, sampler)


@dataclass
class _Pilot:
    plan: np.ndarray  # (C, cells) the (floored) prior the pilot's rows were planned on, req/s
    natural: np.ndarray  # (C, cells) estimated natural req/s per client: the prior times its bin's ratio
    client_counts: np.ndarray  # (C, bins) pilot events per client and pilot bin
    n_bins: int


def _calibrate(setup: _Setup, rate: RateSpec, rng) -> _Pilot:
    """Pilot run: the model's natural rate per client and grid cell for a constant or curve target."""
    sampler = setup.sampler
    edges, width = sampler.edges, np.diff(sampler.edges)
    prior = _floored(setup.prior, sampler.active_rate)
    prior_total = prior.sum(0)
    m0 = segment_multipliers(rate, edges[:-1], edges[1:], prior_total)
    expected = m0 * prior_total * width  # (cells,) events at the target were the prior right
    total = max(expected.sum(), 1e-12)
    # A small scout run measures how far off the prior is over the whole window, so the pilot can
    # draw about PILOT_SHARE of the target's events whatever the model really sends.
    share = min(1.0, SCOUT_EVENTS / total)
    events = sampler.run(prior, share * m0, rng)
    if share < 1.0:
        ratio = max((len(events.t_s) + 1.0) / (share * total + 1.0), 1.0 / MAX_SLOWDOWN)
        share = max(PILOT_SHARE * total, PILOT_MIN_EVENTS) / (ratio * total)
        events = sampler.run(prior, share * m0, rng)

    cell_bin = setup.cell_bin
    n_bins = int(cell_bin[-1]) + 1
    event_cell = np.clip(np.searchsorted(edges, events.t_s, side="right") - 1, 0, len(width) - 1)
    n_clients = len(prior)
    counts = np.bincount(events.client * n_bins + cell_bin[event_cell], minlength=n_clients * n_bins)
    counts = counts.reshape(n_clients, n_bins).astype(np.float64)
    seen = counts.sum(0)
    foreseen = np.bincount(cell_bin, weights=share * expected, minlength=n_bins)
    if seen.sum() == 0 or foreseen.sum() == 0:  # nothing to learn from: keep the prior
        return _Pilot(prior, prior, counts, n_bins)
    ratio = seen.sum() / foreseen.sum()
    # Gamma-Poisson posterior mean of each bin's model/prior ratio, shrunk towards the window's
    # ratio, so a bin the pilot saw (almost) empty does not get a zero or runaway estimate.
    q = (seen + PRIOR_PSEUDO_EVENTS) / (foreseen + PRIOR_PSEUDO_EVENTS / ratio)
    q = np.maximum(q, max(ratio / MAX_BIN_SPEEDUP, 1.0 / MAX_SLOWDOWN))
    return _Pilot(prior, prior * q[cell_bin], counts, n_bins)


def _floored(prior: np.ndarray, active_rate: np.ndarray) -> np.ndarray:
    """(C, cells) prior whose aggregate is at least PRIOR_FLOOR of its window mean.

    Where the empirical curves are all quiet the model may still send: a positive
    prior lets the pilot look there and keeps the multiplier finite. The deficit
    goes to the clients in proportion to their active rates.
    """
    total = prior.sum(0)
    level = total.mean() if total.mean() > 0 else active_rate.sum()
    deficit = np.maximum(PRIOR_FLOOR * level - total, 0.0)
    weight = active_rate / active_rate.sum() if active_rate.sum() > 0 else np.full(len(prior), 1.0 / len(prior))
    return prior + weight[:, None] * deficit[None, :]


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
