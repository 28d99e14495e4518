"""Per-event log-likelihood of a trace under a ClientPool (the M1 convention of generators.base).

Time: each client stream in each rate window is the stationary renewal
process that sampling uses. Within the evaluation window ``[first event,
window_end_s)`` cut on the rate-window grid, a segment's first event scores
its forward recurrence time from the segment start, later events their gap
to the previous event of the same client; both discretized at
``TIME_RESOLUTION_S``. The last event of a segment adds the survival of its
gap to the segment end; a segment where the client sent nothing scores
P(no arrival in it) on the client's next event (or its last one).

Likelihood-only smoothing (sampling is unchanged): a window in which the
client was inactive in training gets a Poisson floor rate of 0.5 requests per
learned span, and a client the pool has never seen is a Poisson stream at the
pool's typical client rate with the population's field distributions. Marks
are smoothed as :mod:`servegen_ml.pool.empirical` describes.

Timestamps are in the training trace's clock: ``t - origin_s`` is wrapped into
the learned span (:func:`servegen_ml.core.spec.wrap_time`); the window
grid must divide the wrap period (e.g. 600 s windows and whole days).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from servegen_ml.compose import interarrival as ia
from servegen_ml.core.spec import TIME_RESOLUTION_S, wrap_time
from servegen_ml.pool.table import ClientPool
from servegen_ml.trace.schema import list_lengths, list_values

FLOOR_REQUESTS_PER_SPAN = 0.5


def pool_log_prob(
    pool: ClientPool,
    trace: pd.DataFrame,
    window_end_s: float | None = None,
    stream_ids: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per event (trace order): ``time``, one column per scored mark, ``total``.

    ``stream_ids`` overrides the client labels used for both the streams and the
    parameters (the naive generator passes one label for all events).
    """
    labels = trace["client_id"].astype(str).to_numpy(dtype=object) if stream_ids is None else stream_ids
    stream_names, stream = np.unique(labels, return_inverse=True)
    code = pool.client_codes(stream_names)[stream]
    tau = trace["timestamp"].to_numpy(np.float64) - pool.origin_s
    out = {"time": _time_log_prob(pool, tau, stream.astype(np.int64), code, window_end_s)}
    out.update(_marks_log_prob(pool, trace, code, tau))
    df = pd.DataFrame(out)
    df["total"] = df.sum(axis=1)
    return df


def _time_log_prob(pool, tau, stream, code, window_end_s):
    n = len(tau)
    if n == 0:
        return np.zeros(0)
    w = pool.rate_window_s
    start = float(tau.min())
    end = float(tau.max()) + TIME_RESOLUTION_S
    if window_end_s is not None:
        end_given = float(window_end_s) - pool.origin_s
        if end_given < tau.max():
            raise ValueError(
                f"window_end_s={window_end_s} is before the last event ({tau.max() + pool.origin_s})"
            )
        end = max(end, end_given)
    k0 = int(np.floor(start / w))
    n_seg = int(np.floor((end - 1e-12) / w)) - k0 + 1
    seg_lo = np.maximum((k0 + np.arange(n_seg)) * w, start)
    seg_hi = np.minimum((k0 + np.arange(n_seg) + 1) * w, end)
    seg_window = np.minimum(np.floor(wrap_time(seg_lo, pool.span_s) / w + 1e-9), pool.n_rate_windows - 1)

    order = np.lexsort((tau, stream))
    s, t, c = stream[order], tau[order], code[order]
    seg = np.clip(np.floor(t / w).astype(np.int64) - k0, 0, n_seg - 1)
    family, shape, scale = _params(pool, c, seg_window[seg].astype(np.int64))
    first = np.ones(n, dtype=bool)
    first[1:] = (s[1:] != s[:-1]) | (seg[1:] != seg[:-1])
    last = np.ones(n, dtype=bool)
    last[:-1] = first[1:]
    prev = np.r_[0.0, t[:-1]]
    x = np.where(first, t - seg_lo[seg], t - prev)
    lp = np.where(
        first,
        ia.log_interval_equilibrium(family, shape, scale, x, x + TIME_RESOLUTION_S),
        ia.log_interval(family, shape, scale, x, x + TIME_RESOLUTION_S),
    )
    lp += np.where(last, ia.log_sf(family, shape, scale, np.maximum(seg_hi[seg] - t, 0.0)), 0.0)
    lp += _empty_segments(pool, s, seg, c, first, seg_lo, seg_hi, seg_window)
    result = np.empty(n)
    result[order] = lp
    return result


def _params(pool, code, window):
    """(family, shape, scale) per element, with the likelihood's floor and unknown-client rules."""
    known = code < pool.n_clients
    rate, family, shape = pool.rate_lookup.get(np.where(known, code, 0), window)
    floor = FLOOR_REQUESTS_PER_SPAN / pool.span_s
    inactive = known & (rate <= 0)
    rate = np.where(known, np.where(inactive, floor, rate), max(pool.population_rate, floor))
    family = np.where(known & ~inactive, family, ia.GAMMA).astype(np.int8)
    shape = np.where(known & ~inactive, shape, 1.0)
    return family, shape, ia.scale_for_rate(family, shape, rate)


def _empty_segments(pool, s, seg, c, first, seg_lo, seg_hi, seg_window):
    """log P(no arrival) of every (stream, segment) without events, added to the stream's next event."""
    n_streams, n_seg = int(s.max()) + 1, len(seg_lo)
    cell = s * n_seg + seg
    first_event = np.full(n_streams * n_seg, np.iinfo(np.int64).max)
    first_event[cell[first]] = np.flatnonzero(first)
    grid = first_event.reshape(n_streams, n_seg)
    empty = grid == np.iinfo(np.int64).max
    # The next non-empty cell of the same stream (reverse running minimum), else the stream's last event.
    next_event = np.minimum.accumulate(grid[:, ::-1], axis=1)[:, ::-1]
    last_of_stream = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    target = np.where(next_event == np.iinfo(np.int64).max, last_of_stream[:, None], next_event)
    es, eg = np.nonzero(empty)
    stream_code = np.zeros(n_streams, dtype=np.int64)
    stream_code[s] = c
    family, shape, scale = _params(pool, stream_code[es], seg_window[eg].astype(np.int64))
    lp = ia.log_sf_equilibrium(family, shape, scale, seg_hi[eg] - seg_lo[eg])
    return np.bincount(target[es, eg], weights=lp, minlength=len(s))


def _marks_log_prob(pool: ClientPool, trace: pd.DataFrame, code: np.ndarray, tau: np.ndarray) -> dict:
    n = len(trace)
    slot = np.floor(wrap_time(tau, pool.span_s) / pool.data_window_s).astype(np.int64)
    slot = np.minimum(slot, pool.n_data_windows - 1)
    out = {}
    for name, (value, row) in _observed_for_pool(pool, trace).items():
        table = pool.field_table(name)
        lp = table.log_pmf(table.resolve(code[row], slot[row]), code[row], value)
        # A multimodal pool scores the input through its text part (input = text + items).
        column = "input_tokens" if name == "text_tokens" else name
        out[column] = np.bincount(row, weights=lp, minlength=n)
    if "reason_ratio" in pool.fields and "reasoning_tokens" in trace.columns:
        table = pool.field_table("reason_ratio")
        r = trace["reasoning_tokens"].to_numpy(np.float64)
        o = trace["output_tokens"].to_numpy(np.float64)
        out["reasoning_tokens"] = table.log_pmf_reasoning(table.resolve(code, slot), code, r, o)
    return out


def _observed_for_pool(pool: ClientPool, trace: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Field -> (observed values, request row of each) in the pool's decomposition of a request."""
    n = len(trace)
    rows = np.arange(n)
    observed = {}
    if "input_tokens" in pool.fields:
        observed["input_tokens"] = (trace["input_tokens"].to_numpy(np.int64), rows)
    else:
        item_sum = np.zeros(n, dtype=np.int64)
        for m in pool.modalities:
            column = f"{m}_tokens"
            counts = list_lengths(trace[column]) if column in trace.columns else np.zeros(n, dtype=np.int64)
            values = list_values(trace[column]) if column in trace.columns else np.zeros(0, dtype=np.int64)
            owner = np.repeat(rows, counts)
            observed[f"{m}_count"] = (counts, rows)
            observed[column] = (values, owner)
            item_sum += np.bincount(owner, weights=values, minlength=n).astype(np.int64)
        if "text_tokens" in trace.columns:
            text = trace["text_tokens"].to_numpy(np.int64)
        else:
            text = np.maximum(trace["input_tokens"].to_numpy(np.int64) - item_sum, 0)
        observed["text_tokens"] = (text, rows)
    observed["output_tokens"] = (trace["output_tokens"].to_numpy(np.int64), rows)
    return observed
