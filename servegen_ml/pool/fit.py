"""Fit a ClientPool from a request-level trace: the ServeGen method, vectorized across windows.

Per client and rate window (``rate_window_s``): the rate (requests / observed
seconds of the window), the gap CV, and the better of a Gamma or Weibull
maximum-likelihood fit of the gaps between the client's requests inside the
window. Per client and data window (``data_window_s``): the empirical
distribution of every field.

Sparse windows: a rate window with fewer than ``min_events`` requests keeps
its own rate but takes the family and shape fitted to all of the client's
gaps; a client with fewer than ``min_events`` requests overall is Poisson
(Gamma, shape 1). A data window with fewer than ``min_events`` requests is not
stored, so sampling and scoring use the client's whole-trace distribution.

Gaps of exactly zero (simultaneous arrivals, e.g. millisecond timestamps) are
fitted as half the time resolution
(:data:`servegen_ml.generators.base.TIME_RESOLUTION_S`), the centre of the
first discretization bin the likelihood scores them in; other gaps are used
as they are.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from servegen_ml.compose import interarrival as ia
from servegen_ml.core.spec import TIME_RESOLUTION_S
from servegen_ml.pool.empirical import count_by_keys
from servegen_ml.pool.table import FIELDS, MODALITIES, POPULATION, RATE_COLUMNS, WHOLE_TRACE, ClientPool
from servegen_ml.trace.schema import list_lengths, list_values

RATIO_DECIMALS = 4


def fit_client_pool(
    trace: pd.DataFrame,
    rate_window_s: float = 600.0,
    data_window_s: float = 21_600.0,
    min_events: int = 20,
    source: str = "",
) -> ClientPool:
    """A ClientPool fitted to a canonical, sorted trace."""
    if len(trace) == 0:
        raise ValueError("cannot fit a generator to an empty trace")
    t = trace["timestamp"].to_numpy(np.float64)
    origin_s = float(t.min())
    tau = t - origin_s
    end_s = float(tau.max())
    n_windows = int(np.floor(end_s / rate_window_s)) + 1
    span_s = n_windows * rate_window_s
    client, clients = pd.factorize(trace["client_id"].astype(str), sort=True)
    clients = tuple(str(c) for c in clients)
    client = client.astype(np.int64)

    rates = _fit_rates(tau, client, len(clients), end_s, rate_window_s, n_windows, min_events)
    rate_client = rates.pop("client").to_numpy()
    rates["client_id"] = pd.Categorical.from_codes(rate_client, categories=list(clients))
    slot = np.floor(tau / data_window_s).astype(np.int64)
    pmfs = _fit_pmfs(trace, client, slot, list(clients), data_window_s, min_events)
    active_s = np.bincount(rate_client, minlength=len(clients)) * rate_window_s
    per_client = np.bincount(client, minlength=len(clients)) / np.maximum(active_s, rate_window_s)
    return ClientPool(
        clients=clients,
        rates=rates[list(RATE_COLUMNS)],
        pmfs=pmfs,
        rate_window_s=float(rate_window_s),
        data_window_s=float(data_window_s),
        span_s=float(span_s),
        origin_s=origin_s,
        population_rate=float(np.median(per_client)),
        source=source,
        notes=[f"fitted from {len(trace)} requests, {len(clients)} clients, min_events={min_events}"],
    )


def _fit_rates(tau, client, n_clients, end_s, window_s, n_windows, min_events) -> pd.DataFrame:
    window = np.floor(tau / window_s).astype(np.int64)
    group = client * n_windows + window
    order = np.lexsort((tau, group))
    group_sorted, tau_sorted, client_sorted = group[order], tau[order], client[order]
    counts = np.bincount(group, minlength=n_clients * n_windows)

    same = group_sorted[1:] == group_sorted[:-1]
    gaps = np.diff(tau_sorted)[same]
    gaps = np.where(gaps > 0, gaps, TIME_RESOLUTION_S / 2)
    gap_group = group_sorted[1:][same]
    gap_client = client_sorted[1:][same]

    used = np.flatnonzero(counts > 0)
    dense = np.searchsorted(used, gap_group)
    family, shape, scale, cv = ia.fit_renewal(gaps, dense, len(used))
    c_family, c_shape, c_scale, c_cv = ia.fit_renewal(gaps, gap_client, n_clients)
    c_events = np.bincount(client, minlength=n_clients)
    poisson = c_events < min_events
    c_family[poisson], c_shape[poisson], c_cv[poisson] = ia.GAMMA, 1.0, 1.0

    u_client, u_window = used // n_windows, used % n_windows
    sparse = (counts[used] < min_events) | ~np.isfinite(shape)
    family = np.where(sparse, c_family[u_client], family)
    shape = np.where(sparse, c_shape[u_client], shape)
    cv = np.where(sparse, c_cv[u_client], cv)
    exposure = np.clip(end_s - u_window * window_s, 0.01 * window_s, window_s)
    rate = counts[used] / exposure
    scale = np.where(sparse | ~np.isfinite(scale), ia.scale_for_rate(family, shape, rate), scale)
    return pd.DataFrame(
        {
            "client": u_client,
            "window_start_s": (u_window * window_s).astype(np.float64),
            "rate": rate,
            "cv": cv,
            "family": np.asarray(ia.FAMILIES, dtype=object)[family],
            "shape": shape,
            "scale": scale,
        }
    )


def request_fields(trace: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Field -> (value per observation, request row of the observation).

    Multimodal traces give text tokens, items per request and tokens per item;
    others give input tokens. The reasoning ratio is observed on requests with output.
    """
    n = len(trace)
    rows = np.arange(n)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    present = [m for m in MODALITIES if f"{m}_tokens" in trace.columns]
    if present:
        item_sum = np.zeros(n, dtype=np.int64)
        for m in present:
            counts = list_lengths(trace[f"{m}_tokens"])
            values = list_values(trace[f"{m}_tokens"])
            out[f"{m}_count"] = (counts, rows)
            out[f"{m}_tokens"] = (values, np.repeat(rows, counts))
            item_sum += np.bincount(np.repeat(rows, counts), weights=values, minlength=n).astype(np.int64)
        if "text_tokens" in trace.columns:
            text = trace["text_tokens"].to_numpy(np.int64)
        else:
            text = np.maximum(trace["input_tokens"].to_numpy(np.int64) - item_sum, 0)
        out["text_tokens"] = (text, rows)
    else:
        out["input_tokens"] = (trace["input_tokens"].to_numpy(np.int64), rows)
    output = trace["output_tokens"].to_numpy(np.int64)
    out["output_tokens"] = (output, rows)
    if "reasoning_tokens" in trace.columns:
        has = output > 0
        ratio = trace["reasoning_tokens"].to_numpy(np.float64)[has] / output[has]
        out["reason_ratio"] = (np.round(ratio, RATIO_DECIMALS), rows[has])
    return out


def _fit_pmfs(trace, client, slot, names, data_window_s, min_events) -> pd.DataFrame:
    """Per-window, whole-trace and population value counts of every field, sorted for loading."""
    n_clients = len(names)
    n_slots = int(slot.max()) + 2 if len(slot) else 1
    whole = n_slots - 1
    requests_per_window = np.bincount(client * n_slots + slot, minlength=n_clients * n_slots)
    parts = []
    for name, (value, row) in request_fields(trace).items():
        c, s, v = client[row], slot[row], np.asarray(value, dtype=np.float64)
        dense = requests_per_window[c * n_slots + s] >= min_events
        groups = [
            (c[dense], s[dense], v[dense]),
            (c, np.full(len(c), whole), v),
            (np.full(len(c), n_clients), np.full(len(c), whole), v),
        ]
        for gc, gs, gv in groups:
            (kc, ks, kv), n = count_by_keys([gc, gs, gv], np.ones(len(gv)))
            parts.append((np.full(len(kv), FIELDS.index(name)), kc, ks, kv, n))
    f, c, s, v, n = (np.concatenate([p[i] for p in parts]) for i in range(5))
    # Sorted by (field, client with the population last, window with the whole trace last, value).
    order = np.lexsort((v, s, c, f))
    f, c, s, v, n = f[order], c[order], s[order], v[order], n[order]
    group = np.cumsum(np.r_[True, (f[1:] != f[:-1]) | (c[1:] != c[:-1]) | (s[1:] != s[:-1])]) - 1
    totals = np.bincount(group, weights=n)
    return pd.DataFrame(
        {
            "client_id": pd.Categorical.from_codes(c, categories=[*names, POPULATION]),
            "window_start_s": np.where(s == whole, float(WHOLE_TRACE), s * data_window_s),
            "field": pd.Categorical.from_codes(f, categories=list(FIELDS)),
            "value": v,
            "prob": n / totals[group],
            "count": n,
        }
    )
