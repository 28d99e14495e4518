"""Slotted traces, read as the continuous arrivals they were stamped from.

A log that stamps requests in slots (every 3 s: :mod:`servegen_ml.stats.lattice`)
records every request of a slot at the slot's start, so a client's gaps are 0
or whole slots. Learned as recorded, the point process draws a run of zero
gaps after each event: requests come in bursts of geometric size, far more
bursty than the slot counts of the log. Instead each client's requests of one
slot are spread over the slot, in their recorded order, at the order
statistics of uniform draws (what a Poisson stream within the slot looks like).
The model learns continuous gaps; its output is put back on the slots when
generated. Scoring a slotted trace asks for each event's slot
(:meth:`servegen_ml.neural.model.tpp.MarkedTPP.forward`, ``slots``).

The draws are a hash of (client index, position in the client's stream), so the
spread is the same for every seed, block size and DDP shard.
"""

from __future__ import annotations

import numpy as np

from servegen_ml.neural.data.events import EventStore

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


# Events read per block; a client's slot that runs past a block's end starts the next one.
BLOCK_EVENTS = 4_000_000


def spread_within_slots(store: EventStore, quantum_s: float) -> None:
    """Move each event of ``store`` (in place) from its slot's start to within the slot; the slots are
    multiples of ``quantum_s`` from the window start. The window end becomes the last slot's end."""
    if quantum_s <= 0 or store.n_events == 0:
        return
    time, origin, n = store.columns["time_s"], store.window_start_s, store.n_events
    lo, block = 0, BLOCK_EVENTS
    while lo < n:
        hi = min(n, lo + block)
        client = store.client_of(np.arange(lo, hi))
        slot = np.round((np.asarray(time[lo:hi], dtype=np.float64) - origin) / quantum_s)
        # Events of one client and slot are contiguous runs: sorted uniforms within each keep their order.
        starts = np.flatnonzero(np.r_[True, (slot[1:] != slot[:-1]) | (client[1:] != client[:-1])])
        if hi < n:  # the last run may go on past hi: it starts the next block
            if len(starts) == 1:  # one run fills the block: read more
                block *= 2
                continue
            hi = lo + int(starts[-1])
            client, slot, starts = client[: hi - lo], slot[: hi - lo], starts[:-1]
        run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, hi - lo]))
        u = _uniform(client, np.arange(lo, hi) - store.offsets[client])
        time[lo:hi] = origin + (slot + u[np.lexsort((u, run))]) * quantum_s
        store.window_end_s = max(store.window_end_s, float(origin + (slot.max() + 1.0) * quantum_s))
        lo, block = hi, BLOCK_EVENTS


def _uniform(client: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) draws from a hash (splitmix64) of each (client, position)."""
    with np.errstate(over="ignore"):
        z = client.astype(np.uint64) * np.uint64(0x100000001B3) + position.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
