"""Statistics the model is normalized with, computed from the training part of an :class:`EventStore`.

* per client: mean and std of log inter-arrival in the client's unit time
  (:mod:`servegen_ml.neural.rate_level`; positive gaps), shrunk toward
  the all-client values for clients with few gaps;
* per count field: mean and std of log1p(count), the frequent exact values
  ("spikes": frequent overall or within one client) for the categorical head,
  and the largest value seen; the same spikes for the reasoning ratio, on a
  grid of 1 / RATIO_SPIKE_SCALE;
* per client: the empirical rate curve over the learned timeline (rate control).

All passes run block by block, so stores on disk are never loaded whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from servegen_ml.neural.data.events import EventStore, iter_blocks
from servegen_ml.neural.data.validation import ValidationBlocks
from servegen_ml.neural.rate_level import resolved_gap
from servegen_ml.neural.sampling.draws import RATIO_SPIKE_SCALE, ratio_key

# Gaps a client needs before its own log-gap statistics outweigh the all-client ones.
SHRINK_GAPS = 5.0
# Smallest log-gap std a client gets: quantized timestamps (Mooncake's 3 s slots) leave almost no
# spread, and standardizing by ~0 would blow the features up.
MIN_GAP_LOG_STD = 0.5
# Counts >= this are never spikes (keeps the value histogram small).
SPIKE_VALUE_LIMIT = 1 << 20
# A value frequent within one client is a spike candidate once that client holds it this often.
MIN_CLIENT_SPIKE_COUNT = 20


@dataclass
class Normalizers:
    gap_log_mean: np.ndarray  # (C,) mean log unit gap (rate_level), positive gaps
    gap_log_std: np.ndarray  # (C,)
    mark_mean: dict[str, float]  # field -> mean log1p(count)
    mark_std: dict[str, float]
    spikes: dict[str, list[int]]  # field -> sorted frequent exact values ("reasoning": ratio grid keys)
    max_count: dict[str, int]  # field -> largest value seen in training
    train_events: np.ndarray  # (C,) events per client before the split

    def to_json(self) -> dict:
        return {
            "mark_mean": self.mark_mean,
            "mark_std": self.mark_std,
            "spikes": self.spikes,
            "max_count": self.max_count,
        }


class _Moments:
    """Running count, sum and sum of squares, optionally per group."""

    def __init__(self, groups: int = 1):
        self.n = np.zeros(groups)
        self.s = np.zeros(groups)
        self.ss = np.zeros(groups)

    def add(self, x: np.ndarray, group: np.ndarray | None = None) -> None:
        g = np.zeros(len(x), dtype=np.int64) if group is None else group
        k = len(self.n)
        self.n += np.bincount(g, minlength=k)
        self.s += np.bincount(g, weights=x, minlength=k)
        self.ss += np.bincount(g, weights=x * x, minlength=k)

    def mean_std(self, prior_mean=0.0, prior_var=1.0, shrink=0.0):
        mean = (self.s + shrink * prior_mean) / np.maximum(self.n + shrink, 1e-12)
        second = (self.ss + shrink * (prior_var + prior_mean**2)) / np.maximum(self.n + shrink, 1e-12)
        return mean, np.sqrt(np.maximum(second - mean**2, 1e-4))


def fit_normalizers(
    store: EventStore,
    to_unit: Callable[[np.ndarray, np.ndarray], np.ndarray],
    validation: ValidationBlocks | None = None,
    max_spikes: int = 32,
    min_spike_share: float = 0.005,
    reduce: Callable[[np.ndarray, str], np.ndarray] | None = None,
    gap_resolution_s: float = 0.0,
) -> Normalizers:
    """Normalizers from the training events of ``store`` (outside the validation blocks; None: all).

    ``to_unit(client, time_s)``: the clients' unit time (:mod:`servegen_ml.neural.rate_level`),
    in which the gaps' statistics are taken. ``reduce(array, "sum" | "max")`` combines the
    running sums over the shards of a DDP run (:mod:`servegen_ml.neural.data.datamodule`).
    Gaps are read as the model's features read them (``rate_level.resolved_gap``).
    """
    n_clients = len(store.client_ids)
    gaps = _Moments(n_clients)
    fields = store.layout.count_fields()
    marks = {f: _Moments() for f in fields}
    hist = {f: np.zeros(SPIKE_VALUE_LIMIT, dtype=np.int64) for f in fields}
    within_client = {f: _ClientShares(n_clients) for f in fields}
    max_count = dict.fromkeys(fields, 0)
    ratio_hist = np.zeros(RATIO_SPIKE_SCALE + 1, dtype=np.int64)
    ratio_within_client = _ClientShares(n_clients)
    train_events = np.zeros(n_clients, dtype=np.int64)
    time = store.columns["time_s"]
    for lo, hi in iter_blocks(store.n_events):
        t = np.asarray(time[lo:hi])
        train = np.ones(len(t), dtype=bool) if validation is None else ~validation.is_validation(t)
        client = store.client_of(np.arange(lo, hi))
        train_events += np.bincount(client[train], minlength=n_clients)
        prev = np.asarray(time[max(lo - 1, 0) : hi - 1]) if lo > 0 else np.concatenate([[np.nan], t[:-1]])
        prev_client = (
            np.concatenate([[client[0]], client[:-1]])
            if lo == 0
            else store.client_of(np.arange(lo - 1, hi - 1))
        )
        # Within one client the unit gap is positive exactly where the gap in seconds is.
        gap = np.where(t > prev, to_unit(client, t) - to_unit(prev_client, np.nan_to_num(prev)), 0.0)
        gap = resolved_gap(np, gap, np.nan_to_num(t - prev), gap_resolution_s)
        ok = train & (store.offsets[client] != np.arange(lo, hi)) & (gap > 0)  # not a client's first
        gaps.add(np.log(gap[ok]), client[ok])
        for f, values, owner in field_values(store, lo, hi, train, client):
            marks[f].add(np.log1p(values.astype(np.float64)))
            small = values[values < SPIKE_VALUE_LIMIT]
            hist[f] += np.bincount(small, minlength=SPIKE_VALUE_LIMIT)
            # Events are grouped by client: every client before this block's last one is complete.
            within_client[f].add(values, owner, complete_below=int(client[-1]))
            max_count[f] = max(max_count[f], int(values.max(initial=0)))
        if store.layout.has_reasoning:
            keys, owner = _ratio_keys(store, lo, hi, train, client)
            ratio_hist += np.bincount(keys, minlength=len(ratio_hist))
            ratio_within_client.add(keys, owner, complete_below=int(client[-1]))
    client_share = {f: within_client[f].best_share() for f in fields}
    spike_hist = dict(hist)
    if store.layout.has_reasoning:
        spike_hist["reasoning"] = ratio_hist
        client_share["reasoning"] = ratio_within_client.best_share()[: len(ratio_hist)]
    if reduce is not None:
        # A rank's shard holds whole clients, so the largest within-client share is the max over ranks.
        client_share = {f: reduce(x, "max") for f, x in client_share.items()}
        for moments in (gaps, *marks.values()):
            moments.n, moments.s, moments.ss = (reduce(x, "sum") for x in (moments.n, moments.s, moments.ss))
        spike_hist = {f: reduce(h, "sum") for f, h in spike_hist.items()}
        max_count = {f: int(reduce(np.array([v]), "max")[0]) for f, v in max_count.items()}
        train_events = reduce(train_events, "sum")
    all_gaps = _Moments()
    all_gaps.n, all_gaps.s, all_gaps.ss = (
        gaps.n.sum(keepdims=True),
        gaps.s.sum(keepdims=True),
        gaps.ss.sum(keepdims=True),
    )
    g_mean, g_std = all_gaps.mean_std()
    c_mean, c_std = gaps.mean_std(g_mean[0], g_std[0] ** 2, SHRINK_GAPS)
    c_std = np.maximum(c_std, MIN_GAP_LOG_STD)
    mark_stats = {f: marks[f].mean_std() for f in fields}
    return Normalizers(
        gap_log_mean=c_mean.astype(np.float32),
        gap_log_std=c_std.astype(np.float32),
        mark_mean={f: float(m[0]) for f, (m, _) in mark_stats.items()},
        mark_std={f: float(s[0]) for f, (_, s) in mark_stats.items()},
        spikes={
            f: frequent_values(h, max_spikes, min_spike_share, client_share[f]) for f, h in spike_hist.items()
        },
        max_count=max_count,
        train_events=train_events,
    )


def _ratio_keys(store: EventStore, lo: int, hi: int, train: np.ndarray, client: np.ndarray):
    """Grid keys of reasoning / output strictly inside (0, 1) (ratios 0 and 1 have their own masses),
    and their clients."""
    r = np.asarray(store.columns["reasoning"][lo:hi])[train].astype(np.int64)
    o = np.asarray(store.columns["output"][lo:hi])[train].astype(np.int64)
    inside = (r > 0) & (r < o)
    return ratio_key(r[inside], o[inside]), client[train][inside]


def field_values(store: EventStore, lo: int, hi: int, train: np.ndarray, client: np.ndarray):
    """(field, training values, their clients) of every count field in events [lo, hi)."""
    client = client[train]
    for m in store.layout.modalities:
        yield f"{m}_count", np.asarray(store.columns[f"{m}_count"][lo:hi])[train], client
        offsets, tokens = store.items[m]
        first, last = np.asarray(offsets[lo:hi]), np.asarray(offsets[lo + 1 : hi + 1])
        counts = (last - first)[train]
        idx = np.repeat(first[train], counts) + (
            np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        values = np.asarray(tokens[idx]) if len(idx) else np.zeros(0, dtype=np.int32)
        yield f"{m}_tokens", values, np.repeat(client, counts)
    yield "input", np.asarray(store.columns["input"][lo:hi])[train], client
    yield "output", np.asarray(store.columns["output"][lo:hi])[train], client


class _ClientShares:
    """Per value, its largest share among the values of any one client (counted at least
    MIN_CLIENT_SPIKE_COUNT times there); clients arrive grouped, so each client's counts are
    reduced once it is complete and memory stays that of the clients in flight."""

    def __init__(self, n_clients: int):
        self.total = np.zeros(n_clients, dtype=np.int64)
        self.best = np.zeros(SPIKE_VALUE_LIMIT)
        self.pending = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)  # (client key, count)

    def add(self, values: np.ndarray, client: np.ndarray, complete_below: int) -> None:
        self.total += np.bincount(client, minlength=len(self.total))
        small = values < SPIKE_VALUE_LIMIT
        keys, counts = np.unique(client[small] * SPIKE_VALUE_LIMIT + values[small], return_counts=True)
        keys, counts = np.concatenate([self.pending[0], keys]), np.concatenate([self.pending[1], counts])
        keys, inverse = np.unique(keys, return_inverse=True)
        counts = np.bincount(inverse, weights=counts).astype(np.int64)
        done = keys < complete_below * SPIKE_VALUE_LIMIT
        self._reduce(keys[done], counts[done])
        self.pending = keys[~done], counts[~done]

    def _reduce(self, keys: np.ndarray, counts: np.ndarray) -> None:
        keep = counts >= MIN_CLIENT_SPIKE_COUNT
        c, v = np.divmod(keys[keep], SPIKE_VALUE_LIMIT)
        np.maximum.at(self.best, v, counts[keep] / self.total[c])

    def best_share(self) -> np.ndarray:
        self._reduce(*self.pending)
        self.pending = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return self.best


def frequent_values(
    hist: np.ndarray, max_spikes: int, min_share: float, client_share: np.ndarray | None = None
) -> list[int]:
    """The most frequent exact values (templates, caps, a finite support), each at least ``min_share``
    overall or, given ``client_share`` (per value, its largest share within one client), within one
    client; ranked by the larger of the two shares."""
    total = hist.sum()
    if total == 0 or max_spikes == 0:
        return []
    share = hist / total
    share = np.where((share >= min_share) & (hist >= 5), share, 0.0)
    if client_share is not None:
        share = np.maximum(share, np.where(client_share >= min_share, client_share, 0.0))
    candidates = np.nonzero(share > 0)[0]
    top = candidates[np.argsort(-share[candidates], kind="stable")[:max_spikes]]
    return sorted(int(v) for v in top)


def rate_curves(
    store: EventStore, bin_s: float, span_s: float, validation: ValidationBlocks | None = None
) -> np.ndarray:
    """(C, bins) events per second of each client in bins of ``bin_s`` over [0, span_s) of the timeline.

    With ``validation`` only training events count, each bin's count divided by
    its training seconds; a bin wholly inside validation blocks takes the rate
    interpolated between the nearest bins with training time (so the model's
    activity features never see a validation count).
    """
    n_bins = max(1, int(np.ceil(span_s / bin_s)))
    n_clients = len(store.client_ids)
    counts = np.zeros(n_clients * n_bins)
    for lo, hi in iter_blocks(store.n_events):
        t = np.asarray(store.columns["time_s"][lo:hi])
        ok = np.ones(len(t), dtype=bool) if validation is None else ~validation.is_validation(t)
        b = np.clip((t[ok] // bin_s).astype(np.int64), 0, n_bins - 1)
        counts += np.bincount(store.client_of(np.arange(lo, hi))[ok] * n_bins + b, minlength=len(counts))
    left = np.arange(n_bins) * bin_s
    width = np.clip(span_s - left, 1e-9, bin_s)
    if validation is not None:
        width = width - validation.validation_seconds(left, left + width)
    seen = width > 1e-6 * bin_s
    rates = counts.reshape(n_clients, n_bins)[:, seen] / width[seen]
    if not seen.any():
        return np.zeros((n_clients, n_bins), dtype=np.float32)
    centers = left + 0.5 * bin_s
    full = np.stack([np.interp(centers, centers[seen], r) for r in rates]) if n_clients else rates
    return full.reshape(n_clients, n_bins).astype(np.float32)


def activity_table(rates: np.ndarray, span_s: float) -> tuple[np.ndarray, float, float]:
    """Standardized log rates (the model's activity features), their mean and std.

    A floor of one request per learned span keeps idle bins finite.
    """
    log_rate = np.log(np.asarray(rates, dtype=np.float64) + 1.0 / max(span_s, 1.0))
    mean, std = float(log_rate.mean()), float(log_rate.std() + 1e-6)
    return ((log_rate - mean) / std).astype(np.float32), mean, std


def flat_activity(log_rate: np.ndarray, n_bins: int, mean: float, std: float, span_s: float) -> np.ndarray:
    """(N, bins) activity rows of clients known only by a mean log rate (new or unknown clients)."""
    value = (np.log(np.exp(np.asarray(log_rate, dtype=np.float64)) + 1.0 / max(span_s, 1.0)) - mean) / std
    return np.repeat(value[:, None], n_bins, axis=1).astype(np.float32)
