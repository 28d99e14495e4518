"""How many requests a spec will produce, estimated before sampling, and the limits that refuse too many.

Sampling holds the whole workload in memory, so a spec like ``duration_s=1e9`` or ``rate=1e9`` would
run until memory is exhausted. The estimate is the mean target rate times the duration (the natural
rate is read from the checkpoint's rate tables; conversation follow-ups come on top of it).
"""

from __future__ import annotations

import os

import numpy as np

from servegen_ml.core.errors import UserError
from servegen_ml.core.spec import GenerationSpec

# Peak memory per generated request while sampling and writing (columns, sort keys, Arrow copies).
BYTES_PER_REQUEST = 400
# Bytes per request of the written file (the largest formats: JSONL with block ids).
FILE_BYTES_PER_REQUEST = 120


def natural_rate_s(gen) -> tuple[float, int] | None:
    """(mean natural req/s of all fitted clients, client count) from the generator's state, if it has one."""
    pool = getattr(gen, "pool_", None)
    if pool is not None and pool.span_s > 0:
        return float(pool.rates["rate"].sum() * pool.rate_window_s / pool.span_s), pool.n_clients
    state = getattr(gen, "state_", None)
    if state is not None and state.span_s > 0:
        return float(np.sum(state.traffic) / state.span_s), len(state.traffic)
    return None


def expected_requests(gen, spec: GenerationSpec) -> float | None:
    """The expected request count of ``spec`` (openers), or None when the generator gives no rate."""
    rate = spec.rate
    if rate.kind == "constant":
        return rate.value * spec.duration_s
    if rate.kind == "curve":
        grid = np.linspace(0.0, spec.duration_s, 10_001)
        return float(np.interp(grid, rate.curve_t_s, rate.curve_rate).mean()) * spec.duration_s
    natural = natural_rate_s(gen)
    if natural is None:
        return None
    total_s, n_clients = natural
    if spec.clients.kind == "new":
        total_s = total_s / max(n_clients, 1) * spec.clients.n
    return total_s * (rate.value if rate.kind == "scale" else 1.0) * spec.duration_s


def available_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_size(gen, spec: GenerationSpec, max_requests: int, max_new_clients: int) -> float | None:
    """The expected request count, after refusing specs above the limits or the free memory."""
    way_around = (
        "generate a shorter span (duration_s) or a lower rate, or several pieces with start_s=; "
        "raise the limit with max_requests= only on a machine with the memory for it"
    )
    if spec.clients.kind == "new" and spec.clients.n > max_new_clients:
        raise UserError(
            f"clients=new:{spec.clients.n}: more than max_new_clients={max_new_clients:,} new clients "
            "(each holds its own rate tables in memory); ask for fewer, or raise max_new_clients="
        )
    n = expected_requests(gen, spec)
    if n is None:
        return None
    if not np.isfinite(n) or n > max_requests:
        raise UserError(
            f"duration_s={spec.duration_s:g} at rate={spec.rate.to_str()} means about {n:,.0f} requests, "
            f"over max_requests={max_requests:,}; {way_around}"
        )
    memory = available_memory_bytes()
    if memory is not None and n * BYTES_PER_REQUEST > memory:
        raise UserError(
            f"duration_s={spec.duration_s:g} at rate={spec.rate.to_str()} means about {n:,.0f} requests, "
            f"about {n * BYTES_PER_REQUEST / 1e9:.1f} GB in memory, and {memory / 1e9:.1f} GB are free; "
            f"{way_around}"
        )
    return n
