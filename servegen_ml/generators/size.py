"""How many requests a spec will produce, estimated before sampling, and the checks that refuse too many.

Generation streams in blocks (:mod:`servegen_ml.generators.stream`), so memory holds the blocks in
flight, not the workload: ``rate=1e9`` is refused for memory, a long ``duration_s`` only for disk space
(the caller checks the file's estimated size). The estimate is the mean target rate times the duration
(the natural rate is read from the checkpoint's rate tables; conversation follow-ups come on top of it).
"""

from __future__ import annotations

import os

import numpy as np

from servegen_ml.core.errors import UserError
from servegen_ml.core.spec import GenerationSpec

# Peak memory per request of a block in flight while sampling and writing (columns, sort keys, Arrow copies).
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


def check_size(gen, spec: GenerationSpec, max_new_clients: int, block_s: float, workers: int) -> float | None:
    """The expected request count, after refusing specs whose blocks would not fit in the free memory.

    Memory holds the blocks in flight (about two per worker, and one being
    written), never the whole workload, so the duration is not limited here.
    """
    if spec.clients.kind == "new" and spec.clients.n > max_new_clients:
        raise UserError(
            f"clients=new:{spec.clients.n}: more than max_new_clients={max_new_clients:,} new clients "
            "(each holds its own rate tables in memory); ask for fewer, or raise max_new_clients="
        )
    n = expected_requests(gen, spec)
    if n is None:
        return None
    if not np.isfinite(n):
        raise UserError(
            f"duration_s={spec.duration_s:g} at rate={spec.rate.to_str()}: no finite request count"
        )
    in_flight = n * min(block_s / spec.duration_s, 1.0) * (2 * workers + 1)
    memory = available_memory_bytes()
    if memory is not None and in_flight * BYTES_PER_REQUEST > memory:
        raise UserError(
            f"rate={spec.rate.to_str()} means about {in_flight:,.0f} requests in memory at once "
            f"({workers} worker(s), block_s={block_s:g}), about {in_flight * BYTES_PER_REQUEST / 1e9:.1f} GB, "
            f"and {memory / 1e9:.1f} GB are free; use fewer workers= or a lower rate"
        )
    return n
