"""Exact per-event log-likelihood of whole client streams under a trained :class:`MarkedTPP`.

Unlike training, nothing is cut: each client is one lane from the window start
to its last event (hidden state carried across chunks), and its last event
adds the survival to the window end.
"""

from __future__ import annotations

import numpy as np
import torch

from servegen_ml.neural.data.chunks import gather_batch, plan_lanes, whole_segments
from servegen_ml.neural.data.datamodule import to_tensors
from servegen_ml.neural.data.events import EventStore
from servegen_ml.neural.data.slots import spread_within_slots
from servegen_ml.neural.model.tpp import MarkedTPP
from servegen_ml.neural.sampling.segment_sampler import ClientTable

# Events held at once in one scoring batch (lanes x chunk length).
BATCH_EVENTS = 1 << 18


@torch.no_grad()
def score_store(
    tpp: MarkedTPP,
    store: EventStore,
    clients: ClientTable,
    quantum_s: float = 0.0,
) -> dict[str, np.ndarray]:
    """Log-likelihood parts per event in store order; ``clients``: per-client inputs indexed like
    ``store.client_ids``. ``quantum_s`` > 0 (a model that learned a slotted trace): the store's
    times are spread within slots of it (in place, as for training: data.slots) and each event's
    time is scored as the probability of its slot."""
    spread_within_slots(store, quantum_s)
    slots = (store.window_start_s, quantum_s) if quantum_s > 0 else None
    segments = whole_segments(store)
    n_lanes = max(1, len(segments))
    chunk_len = int(np.clip(BATCH_EVENTS // n_lanes, 16, 1024))
    plan = plan_lanes(segments, n_lanes, chunk_len, rng=None)
    emb_all, gm_all, gs_all, activity, level, offsets = client_tensors(clients)
    out: dict[str, np.ndarray] = {}
    h = None
    tpp.eval()
    for step in range(plan.n_steps):
        batch = to_tensors(gather_batch(store, plan, step, chunk_len))
        client = batch["client"]
        emb, gm, gs = emb_all[client], gm_all[client], gs_all[client]
        h0 = tpp.encoder.initial_state(emb)
        if h is not None:
            h0 = torch.where(batch["reset"].unsqueeze(1), h0, h)
        parts, h = tpp(batch, emb, gm, gs, h0, activity, level, offsets, slots)
        mask = batch["mask"].numpy()
        idx = (plan.lo[:, step, None] + np.arange(chunk_len)[None, :])[mask]
        for name, value in parts.items():
            out.setdefault(name, np.zeros(store.n_events))[idx] = value.numpy()[mask]
    return out


def client_tensors(clients: ClientTable) -> tuple[torch.Tensor, ...]:
    """The model's per-client inputs as tensors: embedding, gap normalizer (2), activity, level, offsets."""
    f32 = (clients.embedding, clients.gap_mean, clients.gap_std, clients.activity)
    return (
        *(torch.from_numpy(np.asarray(x, dtype=np.float32)) for x in f32),
        torch.from_numpy(np.asarray(clients.level, dtype=np.float64)),
        torch.from_numpy(np.asarray(clients.offsets, dtype=np.float32)),
    )
