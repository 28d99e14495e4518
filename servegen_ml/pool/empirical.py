"""Empirical per-group distributions of one request field: sampling and smoothed log-PMFs.

A group is one (client, data window) pair, or a client's whole-trace
distribution, or the population's. All groups of a field live in flat arrays
sorted by (group, value), so sampling any mix of groups is one ``searchsorted``
(inverse CDF) and scoring is one exact-key lookup.

An entry may stand for a bin of ``width`` consecutive integers starting at its
value (a table compressed past its cap of distinct values, see
:mod:`servegen_ml.pool.bins`): sampling then spreads the entry's mass
uniformly over the bin, and the empirical PMF of each integer in it is the
entry's mass over ``width``. Entries of width 1 are exact values.

Smoothing (likelihood only; sampling draws the empirical PMF as ServeGen does):
``p(v) = (1 - eps) * empirical(v) + eps * q(v)`` where ``eps`` is the
Good-Turing estimate of the unseen mass of the group (share of values seen
once, clipped to [0.001, 0.5]) and ``q`` is a log-normal on ``log1p(v)``
fitted to the client's whole-trace values and discretized to integers
(sigma >= 0.25). For the reasoning ratio, ``q`` is a 50-bin histogram density
of the client's ratios (add-half smoothing), and ``P(reasoning | output)`` is
the mass the ratio distribution puts on
``[(reasoning - 0.5) / output, (reasoning + 0.5) / output)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

EPS_BOUNDS = (1e-3, 0.5)
MIN_SIGMA = 0.25
RATIO_BINS = 50


@dataclass
class FieldTable:
    """One field's distributions for every group.

    ``group_of[client, slot]`` is the group index of that client's data window
    ``slot`` (the last slot is the client's whole trace), or -1.
    """

    group_of: np.ndarray  # (n_clients, n_slots) int64
    values: np.ndarray  # (n_entries,) float64, sorted by (group, value)
    group_start: np.ndarray  # (n_groups + 1,) int64
    cdf: np.ndarray  # (n_entries,) group index + cumulative probability up to and including the entry
    cdf_before: np.ndarray  # (n_entries,) group index + cumulative probability before the entry
    eps: np.ndarray  # (n_groups,) Good-Turing unseen mass
    client_mu: np.ndarray  # (n_clients,) mean of log1p(value) of the client's whole trace
    client_sigma: np.ndarray  # (n_clients,)
    ratio_hist_cdf: np.ndarray | None = None  # (n_clients, RATIO_BINS + 1) for the reasoning ratio
    width: np.ndarray | None = None  # (n_entries,) integers each entry spans; None: all exact

    @property
    def n_groups(self) -> int:
        return len(self.group_start) - 1

    def resolve(self, client: np.ndarray, slot: np.ndarray) -> np.ndarray:
        """Group per (client, slot); a missing window falls back to the client's whole trace,
        a client without this field to the population (the last client row)."""
        g = self.group_of[client, slot]
        g = np.where(g >= 0, g, self.group_of[client, -1])
        return np.where(g >= 0, g, self.group_of[-1, -1])

    def sample(self, group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One value per element of ``group`` by inverse CDF, with its own uniforms."""
        u = rng.random(len(group))
        idx = np.searchsorted(self.cdf, group + u, side="right")
        # Guard the float edge where u rounds onto the group's last cumulative value.
        idx = np.minimum(idx, self.group_start[group + 1] - 1)
        if self.width is None:
            return self.values[idx]
        # Where u falls inside the entry's mass is itself uniform: it places the value inside a bin
        # without drawing more numbers (so exact tables sample the same stream as before).
        mass = self.cdf[idx] - self.cdf_before[idx]
        inside = np.clip((group + u - self.cdf_before[idx]) / mass, 0.0, np.nextafter(1.0, 0.0))
        return self.values[idx] + np.floor(inside * self.width[idx])

    def log_pmf(self, group: np.ndarray, client: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Smoothed log-PMF of integer values (see module docstring)."""
        value = np.asarray(value, dtype=np.float64)
        key = _int_key(group, value)
        if self.width is None:
            idx = np.minimum(np.searchsorted(self._keys, key), len(self._keys) - 1)
            hit = self._keys[idx] == key
            p_emp = np.where(hit, self.cdf[idx] - self.cdf_before[idx], 0.0)
        else:
            # The entry at or below the value, if its bin reaches the value (same group: keys carry it).
            idx = np.maximum(np.searchsorted(self._keys, key, side="right") - 1, 0)
            hit = (self._keys[idx] <= key) & (key < self._keys[idx] + self.width[idx])
            p_emp = np.where(hit, (self.cdf[idx] - self.cdf_before[idx]) / self.width[idx], 0.0)
        eps = self.eps[group]
        log_q = log_discretized_lognormal(value, self.client_mu[client], self.client_sigma[client])
        with np.errstate(divide="ignore"):
            return np.logaddexp(np.log1p(-eps) + np.log(p_emp), np.log(eps) + log_q)

    def log_pmf_reasoning(self, group, client, reasoning_tokens, output_tokens) -> np.ndarray:
        """log P(reasoning_tokens | output_tokens) induced by the (smoothed) ratio distribution."""
        r = np.asarray(reasoning_tokens, dtype=np.float64)
        o = np.asarray(output_tokens, dtype=np.float64)
        safe_o = np.maximum(o, 1.0)
        lo, hi = (r - 0.5) / safe_o, (r + 0.5) / safe_o
        p_emp = self._ratio_cdf(group, hi) - self._ratio_cdf(group, lo)
        p_smooth = _hist_cdf(self.ratio_hist_cdf[client], hi) - _hist_cdf(self.ratio_hist_cdf[client], lo)
        eps = self.eps[group]
        with np.errstate(divide="ignore"):
            lp = np.log(np.maximum((1.0 - eps) * np.maximum(p_emp, 0.0) + eps * p_smooth, 1e-300))
        # With no output there is no reasoning to score.
        return np.where(o > 0, lp, np.where(r == 0, 0.0, -np.inf))

    def _ratio_cdf(self, group, x):
        """P(ratio < x) of each group's empirical ratio distribution."""
        idx = np.searchsorted(self._keys, _ratio_key(group, x), side="left")
        in_group = idx < self.group_start[group + 1]
        before = self.cdf_before[np.minimum(idx, len(self.cdf_before) - 1)] - group
        return np.where(in_group, before, 1.0)

    @property
    def _keys(self) -> np.ndarray:
        if not hasattr(self, "_key_cache"):
            group = np.repeat(np.arange(self.n_groups), np.diff(self.group_start))
            is_ratio = self.ratio_hist_cdf is not None
            self._key_cache = _ratio_key(group, self.values) if is_ratio else _int_key(group, self.values)
        return self._key_cache


def _int_key(group, value):
    """Exact sortable key of (group, integer value)."""
    v = np.clip(np.asarray(value, dtype=np.float64), 0, 2**32 - 1).astype(np.int64)
    return (np.asarray(group, dtype=np.int64) << 32) | v


def _ratio_key(group, x):
    """Sortable float key of (group, ratio in [-1, 2)); ratios on a 1e-4 grid stay distinct."""
    return np.asarray(group, dtype=np.float64) * 4.0 + np.clip(x, -1.0, 2.0) + 1.0


def _hist_cdf(cdf_edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Piecewise-linear CDF on [0, 1] with RATIO_BINS equal bins, row-wise per element."""
    bins = cdf_edges.shape[1] - 1
    pos = np.clip(x, 0.0, 1.0) * bins
    i = np.minimum(pos.astype(np.int64), bins - 1)
    rows = np.arange(len(x))
    left = cdf_edges[rows, i]
    return left + (pos - i) * (cdf_edges[rows, i + 1] - left)


def log_discretized_lognormal(value, mu, sigma) -> np.ndarray:
    """log P(V = value) for log1p(V) ~ Normal(mu, sigma) rounded to integers (V >= 0)."""
    value = np.asarray(value, dtype=np.float64)
    with np.errstate(divide="ignore"):
        a = np.where(value <= 0, -np.inf, (np.log(np.maximum(value, 0.0) + 0.5) - mu) / sigma)
    b = (np.log(np.maximum(value, 0.0) + 1.5) - mu) / sigma
    return _log_normal_interval(a, b, sigma, value)


def _log_normal_interval(a, b, sigma, value):
    """log(Phi(b) - Phi(a)) computed in the tail where it is accurate, or from the density."""
    upper = a > 0
    # Reflect the upper tail so both differences are of small CDF values.
    hi = np.where(upper, -a, b)
    lo = np.where(upper, -b, a)
    lhi, llo = special.log_ndtr(hi), special.log_ndtr(lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = lhi + np.log1p(-np.exp(llo - lhi))
    mid = 0.5 * (np.where(np.isfinite(a), a, b - 1.0) + b)
    dense = -0.5 * mid**2 - 0.5 * np.log(2 * np.pi) + np.log(np.abs(b - np.where(np.isfinite(a), a, b - 1.0)))
    return np.where(np.isfinite(diff), diff, dense)


def build_field_table(
    client: np.ndarray,
    slot: np.ndarray,
    value: np.ndarray,
    count: np.ndarray,
    n_clients: int,
    n_slots: int,
    ratio: bool = False,
    width: np.ndarray | None = None,
) -> FieldTable:
    """Compile the PMF rows of one field.

    ``slot`` is the data-window index, with ``n_slots - 1`` for a client's whole
    trace; ``count`` is the number of requests behind each (group, value);
    ``width`` the integers each entry spans (None or all ones: exact values).
    """
    client = np.asarray(client, dtype=np.int64)
    slot = np.asarray(slot, dtype=np.int64)
    value = np.asarray(value, dtype=np.float64)
    count = np.asarray(count, dtype=np.float64)
    width = None if width is None else np.asarray(width, dtype=np.float64)
    if width is not None and (width == 1).all():
        width = None
    if not (count > 0).all():
        keep = count > 0
        client, slot, value, count = client[keep], slot[keep], value[keep], count[keep]
        width = None if width is None else width[keep]
    gkey = client * n_slots + slot
    if not _sorted_by_group_value(gkey, value):
        order = np.lexsort((value, gkey))
        client, slot, value, count, gkey = client[order], slot[order], value[order], count[order], gkey[order]
        width = None if width is None else width[order]

    new_group = np.ones(len(gkey), dtype=bool)
    new_group[1:] = gkey[1:] != gkey[:-1]
    group = np.cumsum(new_group) - 1
    n_groups = int(group[-1]) + 1 if len(group) else 0
    group_start = np.concatenate([np.flatnonzero(new_group), [len(group)]]).astype(np.int64)
    group_of = np.full((n_clients, n_slots), -1, dtype=np.int64)
    group_of[client[new_group], slot[new_group]] = np.arange(n_groups)

    total = np.bincount(group, weights=count, minlength=n_groups)
    cum = np.cumsum(count)
    base = (cum - count)[group_start[:-1]] if n_groups else np.zeros(0)
    within = (cum - base[group]) / total[group]
    cdf = group + within
    cdf_before = group + within - count / total[group]
    # A group's last entry ends exactly at the next integer so searchsorted never crosses groups.
    cdf[group_start[1:] - 1] = np.arange(n_groups) + 1.0

    singletons = np.bincount(group, weights=(np.round(count) == 1).astype(np.float64), minlength=n_groups)
    eps = np.clip(singletons / np.maximum(total, 1.0), *EPS_BOUNDS)

    # A bin's mass sits, on average, at its middle integer.
    centre = value if width is None else value + (width - 1) / 2
    mu, sigma = _client_lognormal(client, slot, centre, count, n_clients, n_slots - 1)
    hist = _client_ratio_hist(client, slot, value, count, n_clients, n_slots - 1) if ratio else None
    return FieldTable(group_of, value, group_start, cdf, cdf_before, eps, mu, sigma, hist, width)


def _sorted_by_group_value(gkey, value) -> bool:
    step = np.diff(gkey)
    return bool(np.all(step >= 0) and np.all((step > 0) | (np.diff(value) > 0)))


def _client_lognormal(client, slot, value, count, n_clients, whole_slot):
    m = slot == whole_slot
    w = count[m]
    y = np.log1p(np.maximum(value[m], 0.0))
    n = np.bincount(client[m], weights=w, minlength=n_clients)
    s1 = np.bincount(client[m], weights=w * y, minlength=n_clients)
    s2 = np.bincount(client[m], weights=w * y * y, minlength=n_clients)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(n > 0, s1 / n, 0.0)
        sigma = np.sqrt(np.maximum(np.where(n > 0, s2 / n, 1.0) - mu**2, 0.0))
    return mu, np.maximum(sigma, MIN_SIGMA)


def _client_ratio_hist(client, slot, value, count, n_clients, whole_slot):
    m = slot == whole_slot
    b = np.minimum((np.clip(value[m], 0.0, 1.0) * RATIO_BINS).astype(np.int64), RATIO_BINS - 1)
    counts = np.zeros((n_clients, RATIO_BINS))
    np.add.at(counts, (client[m], b), count[m])
    counts += 0.5
    probs = counts / counts.sum(axis=1, keepdims=True)
    return np.concatenate([np.zeros((n_clients, 1)), np.cumsum(probs, axis=1)], axis=1)


# A count table merges its chunk parts once they hold this many rows (or a quarter of the table).
MERGE_MIN_ROWS = 1_000_000


def count_by_keys(keys: list[np.ndarray], count: np.ndarray):
    """Distinct key tuples (sorted, first key primary) and the summed ``count`` of each.

    The keys are ranked and packed into one int64 so a single sort does the work.
    """
    codes, uniques, radix = [], [], []
    for k in keys:
        u, inv = _rank(np.asarray(k))
        uniques.append(u)
        codes.append(inv)
        radix.append(len(u))
    if float(np.prod(np.asarray(radix, dtype=np.float64))) >= 2.0**62:
        raise ValueError("too many distinct key combinations to count")
    packed = np.zeros(len(count), dtype=np.int64)
    for inv, r in zip(codes, radix, strict=True):
        packed = packed * r + inv
    order = np.argsort(packed)
    packed = packed[order]
    starts = (
        np.flatnonzero(np.r_[True, packed[1:] != packed[:-1]]) if len(packed) else np.zeros(0, dtype=np.int64)
    )
    sums = np.add.reduceat(np.asarray(count, dtype=np.float64)[order], starts) if len(starts) else np.zeros(0)
    first = order[starts]
    return [u[inv[first]] for u, inv in zip(uniques, codes, strict=True)], sums


class CountTable:
    """Summed counts per distinct key tuple, added chunk by chunk; memory follows the distinct keys."""

    def __init__(self, width: int):
        self.width = width
        self._parts: list[tuple[list[np.ndarray], np.ndarray]] = []
        self._pending = 0
        self._merged = 0

    def add(self, keys: list[np.ndarray], counts: np.ndarray) -> None:
        part = count_by_keys(keys, counts)
        self._parts.append(part)
        self._pending += len(part[1])
        # Merging often keeps the pending parts (and the merge's temporaries) small next to the table.
        if self._pending > max(self._merged // 4, MERGE_MIN_ROWS):
            self._merge()

    def _merge(self) -> None:
        keys = [np.concatenate([p[0][i] for p in self._parts]) for i in range(self.width)]
        merged = count_by_keys(keys, np.concatenate([p[1] for p in self._parts]))
        self._parts, self._pending, self._merged = [merged], 0, len(merged[1])

    def result(self) -> tuple[list[np.ndarray], np.ndarray]:
        if not self._parts:
            return [np.zeros(0, dtype=np.int64) for _ in range(self.width)], np.zeros(0)
        if len(self._parts) > 1:
            self._merge()
        return self._parts[0]


def _rank(values: np.ndarray):
    """(sorted distinct values, index of each value among them); small integer ranges skip the sort."""
    if values.dtype.kind in "iu" and len(values) and values.max() - values.min() < 4 * len(values) + 1024:
        lo = values.min()
        present = np.zeros(values.max() - lo + 1, dtype=bool)
        present[values - lo] = True
        rank = np.cumsum(present) - 1
        return np.flatnonzero(present) + lo, rank[values - lo]
    return np.unique(values, return_inverse=True)
