"""Sample a canonical trace from a ClientPool for a generation spec, vectorized.

For every selected client and every rate window the spec touches, arrivals
come from that window's renewal process at the window's rate times the rate
control factor (:mod:`servegen_ml.compose`); each request's fields are drawn
independently from its client's data-window distributions, every field with
its own uniforms. Multimodal requests draw an item count, then tokens per
item; ``input_tokens = text_tokens + sum(item tokens)``. Reasoning tokens are
``round(ratio * output_tokens)``.

Timeline: the spec's ``start_s + t`` is mapped into the learned span with
:func:`servegen_ml.core.spec.wrap_time`. Conversations are not modelled:
``spec.upsample`` has no effect and no conversation ids are produced.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from servegen_ml.compose import (
    merge_streams,
    renewal_arrivals,
    segment_multipliers,
    segment_step_s,
    window_segments,
)
from servegen_ml.core.clients import source_clients
from servegen_ml.core.spec import GenerationSpec, wrap_time
from servegen_ml.pool.table import ClientPool


def sample_pool(
    pool: ClientPool,
    spec: GenerationSpec,
    rng: np.random.Generator,
    sources: tuple[np.ndarray, list[str]] | None = None,
) -> pd.DataFrame:
    """``sources``: :func:`~servegen_ml.core.clients.source_clients`' result drawn once for a whole
    spec (else drawn here)."""
    src, names = sources if sources is not None else source_clients(pool.clients, spec.clients, rng)
    seg_start, seg_end = window_segments(
        spec.start_s, spec.duration_s, pool.rate_window_s, segment_step_s(spec.rate)
    )
    window = np.floor(wrap_time(seg_start, pool.span_s) / pool.rate_window_s + 1e-9).astype(np.int64)
    window = np.minimum(window, pool.n_rate_windows - 1)
    n_seg = len(seg_start)
    pair_client = np.repeat(np.arange(len(src)), n_seg)
    pair_seg = np.tile(np.arange(n_seg), len(src))
    rate, family, shape = pool.rate_lookup.get(src[pair_client], window[pair_seg])
    natural = np.bincount(pair_seg, weights=rate, minlength=n_seg)
    factor = segment_multipliers(spec.rate, seg_start - spec.start_s, seg_end - spec.start_s, natural)
    active = np.flatnonzero(rate * factor[pair_seg] > 0)
    pair_client, pair_seg = pair_client[active], pair_seg[active]
    owner, t = renewal_arrivals(
        seg_start[pair_seg],
        seg_end[pair_seg],
        family[active],
        shape[active],
        rate[active] * factor[pair_seg],
        rng,
    )
    client = pair_client[owner]
    slot = np.floor(wrap_time(t, pool.span_s) / pool.data_window_s).astype(np.int64)
    slot = np.minimum(slot, pool.n_data_windows - 1)
    ints, lists = sample_marks(pool, src[client], slot, rng)
    rel = np.minimum(t - spec.start_s, np.nextafter(spec.duration_s, 0.0))
    return merge_streams(np.maximum(rel, 0.0), client, names, ints, lists)


def sample_marks(pool: ClientPool, client: np.ndarray, slot: np.ndarray, rng: np.random.Generator):
    """(integer columns, list columns) of requests from pool clients ``client`` in data windows ``slot``."""
    n = len(client)
    ints: dict[str, np.ndarray] = {}
    lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fields = pool.fields

    def draw(name, c=client, s=slot):
        table = pool.field_table(name)
        return table.sample(table.resolve(c, s), rng)

    if "text_tokens" in fields:
        text = draw("text_tokens").astype(np.int64)
        item_tokens = np.zeros(n, dtype=np.int64)
        for m in pool.modalities:
            count = draw(f"{m}_count").astype(np.int64)
            owner = np.repeat(np.arange(n), count)
            tokens = draw(f"{m}_tokens", client[owner], slot[owner]).astype(np.int64)
            item_tokens += np.bincount(owner, weights=tokens, minlength=n).astype(np.int64)
            lists[f"{m}_tokens"] = (count, tokens)
        ints["input_tokens"] = text + item_tokens
        ints["text_tokens"] = text
    else:
        ints["input_tokens"] = draw("input_tokens").astype(np.int64)
    output = draw("output_tokens").astype(np.int64)
    ints["output_tokens"] = output
    if "reason_ratio" in fields:
        ratio = draw("reason_ratio")
        ints["reasoning_tokens"] = np.minimum(np.floor(ratio * output + 0.5), output).astype(np.int64)
    return ints, lists
