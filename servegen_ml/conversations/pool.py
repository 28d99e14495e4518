"""Conversations for the pool-based generators (naive, parametric): openers from a ClientPool, follow-up marks from it.

The pool is fitted on conversation openers only (its rates are opener rates;
its distributions are the openers' lengths). Follow-ups take their output,
reasoning and items from the same per-client, per-data-window distributions
as any request of their client at their time (a client the pool has never
seen, e.g. ``clients=new:N``, draws from the population's); their prompt
grows as the conversation model says (:mod:`servegen_ml.conversations.sampling`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from servegen_ml.compose.segments import window_segments
from servegen_ml.conversations.sampling import FollowUpContext, MarksFn
from servegen_ml.core.spec import GenerationSpec, wrap_time
from servegen_ml.pool.sampling import sample_marks
from servegen_ml.pool.table import ClientPool


def pool_follow_up_marks(pool: ClientPool) -> MarksFn:
    """Marks of follow-ups drawn from the pool's distributions at their timeline positions."""

    def marks(context: FollowUpContext, rng: np.random.Generator):
        slot = np.floor(wrap_time(context.timeline_s, pool.span_s) / pool.data_window_s).astype(np.int64)
        codes = pool.client_codes(context.client_ids)
        return sample_marks(pool, codes, np.minimum(slot, pool.n_data_windows - 1), rng)

    return marks


def pool_natural_opener_rates(pool: ClientPool, spec: GenerationSpec) -> pd.Series:
    """Client id -> mean natural opener req/s over the spec's window, for the clients the spec generates.

    For ``new:N`` the index holds the fitted clients the new ones are drawn
    from, each weighted by its expected number of copies.
    """
    seg_start, seg_end = window_segments(spec.start_s, spec.duration_s, pool.rate_window_s)
    window = np.floor(wrap_time(seg_start, pool.span_s) / pool.rate_window_s + 1e-9).astype(np.int64)
    window = np.minimum(window, pool.n_rate_windows - 1)
    client = np.repeat(np.arange(pool.n_clients), len(window))
    rate, _, _ = pool.rate_lookup.get(client, np.tile(window, pool.n_clients))
    seconds = np.tile(seg_end - seg_start, pool.n_clients)
    mean_rate = np.bincount(client, weights=rate * seconds, minlength=pool.n_clients) / spec.duration_s
    if spec.clients.kind == "list":
        codes = pool.client_codes(spec.clients.ids)
        return pd.Series(np.r_[mean_rate, 0.0][codes], index=list(spec.clients.ids))
    if spec.clients.kind == "new":
        copies = spec.clients.n / pool.n_clients  # new clients copy fitted ones uniformly
        return pd.Series(copies * mean_rate, index=list(pool.clients))
    return pd.Series(mean_rate, index=list(pool.clients))
