"""Each client's own training marginals of every head, for starting the heads there.

A per-client offset (``HeadStack.client_offsets``) that starts at zero moves by
about one learning rate per optimizer step under Adam: after a thousand steps
it can reach ~1 standardized unit, while clients of a pool differ by several
(a client of median input 51 tokens beside one of 2,400). So each client's
offsets start at its own marginal instead: its category shares (spikes, the
continuous part; the reasoning ratio's 0 and 1) and its continuous part's
quantiles, each shrunk toward the pooled one by ``PRIOR_EVENTS``. The heads'
shared biases start at the pooled marginal. The time head is left at its
generic start: two per-client starts (its share of simultaneous arrivals; its
components at the client's log unit-gap quantiles) each cost the deepseek-r1
pool sample held-out time likelihood (0.18 and ~0.3 nats; docs/neural.md).

One streamed pass after the normalizers (the spikes must be known); memory is
clients x grid bins per field, never rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servegen_ml.neural.data.events import EventStore, iter_blocks
from servegen_ml.neural.data.normalizers import Normalizers, field_values
from servegen_ml.neural.data.validation import ValidationBlocks
from servegen_ml.neural.sampling.draws import ratio_key

# Grid step of the continuous parts' histograms: log1p(count) or logit(ratio), ~10 % of a value.
GRID_STEP = 0.1
# logit(ratio) grid: ratios of outputs up to ~e^12 tokens.
RATIO_LOGIT_MAX = 12.0
# A client's marginal is weighed against the pooled one as n / (n + PRIOR_EVENTS) (n: its values).
PRIOR_EVENTS = 10.0


@dataclass
class Marginals:
    """One head's marginals: category counts in the head's logit order and the continuous part's histogram."""

    categories: np.ndarray  # (C, n_logits)
    continuous: np.ndarray  # (C, bins)
    edges: np.ndarray  # (bins + 1,) of the continuous variable (log1p count, logit ratio)

    def category_logits(self) -> tuple[np.ndarray, np.ndarray]:
        """Log shares: pooled (n_logits,) and per client shrunk toward it (C, n_logits)."""
        pooled = _shares(self.categories.sum(0, keepdims=True))[0]
        n = self.categories.sum(1, keepdims=True)
        client = (self.categories + PRIOR_EVENTS * pooled) / (n + PRIOR_EVENTS)
        return _log(pooled), _log(client)

    def quantiles(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous part's quantile functions at ``probs``: pooled (P,) and per client shrunk toward it (C, P)."""
        pooled = _quantile_rows(self.continuous.sum(0, keepdims=True), self.edges, probs)[0]
        n = self.continuous.sum(1, keepdims=True)
        own = np.where(n > 0, _quantile_rows(self.continuous, self.edges, probs), pooled)
        weight = n / (n + PRIOR_EVENTS)
        return pooled, weight * own + (1.0 - weight) * pooled


@dataclass
class ClientMarks:
    heads: dict[str, Marginals]  # head name (count fields, "reasoning") -> marginals

    def reduce(self, reduce) -> ClientMarks:
        """Summed over DDP ranks (each holds its own clients' rows)."""
        return ClientMarks(
            {
                k: Marginals(reduce(m.categories, "sum"), reduce(m.continuous, "sum"), m.edges)
                for k, m in self.heads.items()
            }
        )


def fit_client_marks(
    store: EventStore, norm: Normalizers, validation: ValidationBlocks | None = None
) -> ClientMarks:
    """Per-client marginals of the training events (outside ``validation``) of ``store``.

    Count heads get their spikes and log1p(count); the reasoning head its ratio 0 / 1 /
    continuous / spikes and logit(ratio).
    """
    n_clients = len(store.client_ids)
    layout = store.layout
    heads: dict[str, Marginals] = {}
    for f in layout.count_fields():
        top = np.log1p(float(max(norm.max_count[f], 1))) + GRID_STEP
        heads[f] = _empty(n_clients, len(norm.spikes[f]) + 1, np.arange(0.0, top + GRID_STEP, GRID_STEP))
    if layout.has_reasoning:
        edges = np.arange(-RATIO_LOGIT_MAX, RATIO_LOGIT_MAX + GRID_STEP / 2, GRID_STEP)
        heads["reasoning"] = _empty(n_clients, 3 + len(norm.spikes["reasoning"]), edges)
    time = store.columns["time_s"]
    for lo, hi in iter_blocks(store.n_events):
        t = np.asarray(time[lo:hi])
        train = np.ones(len(t), dtype=bool) if validation is None else ~validation.is_validation(t)
        client = store.client_of(np.arange(lo, hi))
        for f, values, owner in field_values(store, lo, hi, train, client):
            slot, hit = _spike_slots(norm.spikes[f], values)
            category = np.where(hit, slot, len(norm.spikes[f]))
            _add(heads[f].categories, owner, category)
            _add_histogram(heads[f], owner[~hit], np.log1p(values[~hit].astype(np.float64)))
        if layout.has_reasoning:
            _add_reasoning(heads["reasoning"], store, lo, hi, train, client, norm.spikes["reasoning"])
    return ClientMarks(heads)


def _add_reasoning(m: Marginals, store, lo, hi, train, client, spike_keys) -> None:
    """Categories [ratio 0, ratio 1, continuous, spikes...] of events with output > 0, and logit(ratio)."""
    r = np.asarray(store.columns["reasoning"][lo:hi])[train].astype(np.int64)
    o = np.asarray(store.columns["output"][lo:hi])[train].astype(np.int64)
    owner = client[train]
    some = o > 0
    r, o, owner = r[some], o[some], owner[some]
    category = np.where(r == 0, 0, np.where(r == o, 1, 2))
    inside = category == 2
    keys, inside_owner = ratio_key(r[inside], o[inside]), owner[inside]
    slot, hit = _spike_slots(spike_keys, keys)
    category[np.nonzero(inside)[0][hit]] = 3 + slot[hit]
    _add(m.categories, owner, category)
    ratio = r[inside][~hit] / o[inside][~hit]
    _add_histogram(m, inside_owner[~hit], np.log(ratio / (1.0 - ratio)))


def _spike_slots(spikes, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value's index among the sorted ``spikes`` and whether it is one."""
    spikes = np.asarray(spikes, dtype=np.int64)
    if len(spikes) == 0:
        return np.zeros(len(values), dtype=np.int64), np.zeros(len(values), dtype=bool)
    slot = np.searchsorted(spikes, values).clip(max=len(spikes) - 1)
    return slot, spikes[slot] == values


def _empty(n_clients: int, n_categories: int, edges: np.ndarray) -> Marginals:
    return Marginals(
        np.zeros((n_clients, n_categories)), np.zeros((n_clients, max(len(edges) - 1, 0))), edges
    )


def _add(table: np.ndarray, row: np.ndarray, column: np.ndarray) -> None:
    width = table.shape[1]
    table += np.bincount(row * width + column, minlength=table.size).reshape(table.shape)


def _add_histogram(m: Marginals, owner: np.ndarray, x: np.ndarray) -> None:
    bins = m.continuous.shape[1]
    b = np.clip(np.searchsorted(m.edges, x, side="right") - 1, 0, bins - 1)
    _add(m.continuous, owner, b)


def _shares(counts: np.ndarray) -> np.ndarray:
    n = counts.sum(1, keepdims=True)
    uniform = np.full_like(counts, 1.0 / counts.shape[1])
    return np.where(n > 0, counts / np.maximum(n, 1e-300), uniform)


def _log(share: np.ndarray) -> np.ndarray:
    # A category never seen still gets a small share, so the head can learn it.
    return np.log(np.maximum(share, 1e-4))


def _quantile_rows(hist: np.ndarray, edges: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(R, P) quantiles at ``probs`` of each row's histogram, linear within a bin (empty rows: NaN)."""
    total = hist.sum(1, keepdims=True)
    cumulative = np.concatenate([np.zeros((len(hist), 1)), np.cumsum(hist, 1)], 1)
    cdf = cumulative / np.where(total > 0, total, np.nan)
    p = np.clip(probs, 1e-9, 1.0 - 1e-9)
    # The bin each quantile falls in: the last CDF point strictly below p starts it.
    b = np.clip((cdf[:, :, None] < p).sum(1) - 1, 0, hist.shape[1] - 1)
    lo, hi = np.take_along_axis(cdf, b, 1), np.take_along_axis(cdf, b + 1, 1)
    frac = np.where(hi > lo, (p - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    return edges[b] + frac * (edges[b + 1] - edges[b])
