"""Each client's rate level r_c(t): the neural model's explicit, calibrated share of time.

The model splits a client's arrivals into a *level* and a *shape*. The level is
a piecewise-constant rate per client and rate bin of the learned timeline
(req/s), fitted from the training counts; the point process (GRU + gap head)
models the gaps in the client's *unit time* ``u = Lambda_c(t)``, the integral
of the level, with every gap's conditional mean pinned to 1
(:func:`servegen_ml.neural.features.unit_gap_params`). By Wald's identity a
stream sampled at its natural rate then sends ``Lambda_c(T)`` requests in
expectation over ``[0, T]``, however bursty its learned shape: the model is
calibrated by construction, per client and per bin.

Fit: the Poisson maximum-likelihood rate of a bin is its count over its
length; each is shrunk toward the client's mean rate by a Gamma prior worth
``PRIOR_EVENTS`` events (``(n + a) / (w + a / mean)``), so an idle bin keeps a
small positive rate (an event there stays possible, its likelihood finite)
and a busy bin keeps its count. Positions past the learned span wrap like
every generator's timeline (:func:`servegen_ml.core.spec.wrap_time`), so the
cumulative level there adds whole periods.

Written once for numpy and torch (``xp``), like :mod:`servegen_ml.neural.features`.
"""

from __future__ import annotations

import numpy as np

from servegen_ml.core.spec import wrap_period

# Weight of the client's mean rate in each bin, in events (the Gamma prior's shape).
PRIOR_EVENTS = 1.0


def fit_rate_level(rates: np.ndarray, bin_s: float, span_s: float) -> np.ndarray:
    """(C, bins) float64 level from empirical req/s per client and bin (``rate_curves``)."""
    rates = np.asarray(rates, dtype=np.float64)
    n_bins = rates.shape[1]
    width = bin_widths(n_bins, bin_s, span_s)
    counts = rates * width
    mean = np.maximum(counts.sum(1) / span_s, 0.5 / span_s)
    return (counts + PRIOR_EVENTS) / (width + PRIOR_EVENTS / mean[:, None])


def flat_level(rate: np.ndarray, n_bins: int) -> np.ndarray:
    """(N, bins) level of clients known only by a mean rate (new or unknown clients)."""
    return np.repeat(np.asarray(rate, dtype=np.float64)[:, None], n_bins, axis=1)


def bin_widths(n_bins: int, bin_s: float, span_s: float) -> np.ndarray:
    """Seconds of each rate bin inside ``[0, span_s)`` (the last one may be short)."""
    return np.clip(span_s - np.arange(n_bins) * bin_s, 1e-9, bin_s)


def cumulative_table(level: np.ndarray, bin_s: float, span_s: float) -> np.ndarray:
    """(C, bins + 1) float64 unit time at the bin edges (0 at position 0)."""
    level = np.asarray(level, dtype=np.float64)
    steps = level * bin_widths(level.shape[1], bin_s, span_s)
    return np.concatenate([np.zeros((len(level), 1)), np.cumsum(steps, axis=1)], axis=1)


def unit_time(xp, level, cum, client, position_s, bin_s: float, span_s: float):
    """Lambda_c(p): client ``client``'s unit time at learned-timeline positions ``p`` (float64).

    level (C, bins), cum (C, bins + 1) from :func:`cumulative_table`, both float64;
    ``client`` broadcast against ``position_s``. Positions below 0 extend the first
    bin's rate; positions past the span move back whole periods (each adding the
    level's integral over one period, the span's last ``period`` seconds).
    """
    return _unit(level, cum, client, _locate(xp, position_s, level.shape[1], bin_s, span_s), bin_s, span_s)


def unit_span(xp, level, cum, client, start_s, end_s, bin_s: float, span_s: float):
    """Lambda_c(end) - Lambda_c(start), exact to rounding also for tiny spans (one bin: rate x length)."""
    n_bins = level.shape[1]
    a, b = _locate(xp, start_s, n_bins, bin_s, span_s), _locate(xp, end_s, n_bins, bin_s, span_s)
    whole = _unit(level, cum, client, b, bin_s, span_s) - _unit(level, cum, client, a, bin_s, span_s)
    return xp.where((a[0] == b[0]) & (a[2] == b[2]), level[client, a[2]] * (end_s - start_s), whole)


def _unit(level, cum, client, located, bin_s: float, span_s: float):
    k, q, b = located
    inside = cum[client, b] + level[client, b] * (q - b * bin_s)
    if not bool((k > 0).any()):
        return inside
    per_period = cum[client, level.shape[1]] - _at(level, cum, client, span_s - wrap_period(span_s), bin_s)
    return inside + k * per_period


def _locate(xp, p, n_bins: int, bin_s: float, span_s: float):
    """Periods to move back (k), the position inside the span (q) and its bin (b, integer)."""
    period = wrap_period(span_s)
    k = xp.where(p >= span_s, xp.clip(xp.ceil((p - span_s) / period + 1e-12), 1.0, None), 0.0 * p)
    q = p - k * period
    b = xp.clip(xp.floor(q / bin_s), 0, n_bins - 1)
    return k, q, (b.long() if hasattr(b, "long") else b.astype(np.int64))


def _at(level, cum, client, q: float, bin_s: float):
    """Lambda_c at one position ``q`` inside the span, per client."""
    n_bins = level.shape[1]
    b = min(max(int(np.floor(q / bin_s)), 0), n_bins - 1)
    return cum[client, b] + level[client, b] * (q - b * bin_s)


class UnitClock:
    """A level table's unit time (:func:`unit_time`) and unit spans (:func:`unit_span`) for one ``xp``."""

    def __init__(self, xp, level, cum, bin_s: float, span_s: float):
        self.xp, self.level, self.cum, self.bin_s, self.span_s = xp, level, cum, bin_s, span_s

    def __call__(self, client, p):
        if self.xp is np:
            p = np.asarray(p, dtype=np.float64)
        return unit_time(self.xp, self.level, self.cum, client, p, self.bin_s, self.span_s)

    def span(self, client, start_s, end_s):
        return unit_span(self.xp, self.level, self.cum, client, start_s, end_s, self.bin_s, self.span_s)


def unit_clock(level: np.ndarray, bin_s: float, span_s: float) -> UnitClock:
    """The numpy unit clock of a level table (C, bins): ``clock(client, position_s)`` -> unit time."""
    level = np.asarray(level, dtype=np.float64)
    return UnitClock(np, level, cumulative_table(level, bin_s, span_s), bin_s, span_s)


def resolved_gap(xp, gap, gap_s, resolution_s: float):
    """The unit gap the features read: a positive gap shorter than ``resolution_s`` seconds
    (``gap_s``: the same gap in seconds) reads as one resolution long.

    The likelihood scores every gap below the clock's resolution as one bin, so the sampler
    draws them at no particular size; reading their recorded size (often 1e-7 s) would give
    the history a signal that sampling never reproduces (bursty clients then lose their
    bursts when sampled free). ``resolution_s`` 0 reads gaps as they are.
    """
    if resolution_s <= 0:
        return gap
    short = (gap_s > 0) & (gap_s < resolution_s)
    return xp.where(short, gap * resolution_s / xp.where(short, gap_s, resolution_s), gap)
