"""Event streams -> fixed-size training batches with carried hidden state.

A *segment* is a run of one client's events ``[lo, hi)`` scored in order; its
first input is the previous real event ``prev`` or, when ``prev == -1``, a start
token at ``window_start_s``. A segment may end with a survival term to
``survival_end_s`` (the end of its observation window).

Training packs segments into ``n_lanes`` lanes, each a queue of chunks of
``chunk_len`` events; batch ``k`` is chunk ``k`` of every lane. The model carries
each lane's hidden state from one batch to the next and resets it where a new
segment starts. Long segments are cut into pieces so lanes finish together;
a piece starts cold (fresh client state) but still sees the real previous event.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from servegen_ml.neural.data.events import EventStore


@dataclass
class Segments:
    client: np.ndarray  # (S,) int64
    lo: np.ndarray  # (S,) first event index
    hi: np.ndarray  # (S,) one past the last event index
    prev: np.ndarray  # (S,) previous event index, -1 for a start token
    window_start_s: np.ndarray  # (S,) timeline position of the start token
    survival_end_s: np.ndarray  # (S,) end of the observation window after hi - 1; NaN for none

    def __len__(self) -> int:
        return len(self.lo)

    def select(self, keep: np.ndarray) -> Segments:
        return Segments(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


def whole_segments(store: EventStore, with_survival: bool = True) -> Segments:
    """One segment per client with events, from the store's window start to its end."""
    lo, hi = store.offsets[:-1], store.offsets[1:]
    n = len(lo)
    end = np.full(n, store.window_end_s if with_survival else np.nan)
    seg = Segments(np.arange(n), lo.copy(), hi.copy(), np.full(n, -1), np.full(n, store.window_start_s), end)
    return seg.select(hi > lo)


def cut_long(segments: Segments, max_events: int) -> Segments:
    """Cut segments longer than ``max_events`` into pieces; later pieces start from their real previous event."""
    lengths = segments.hi - segments.lo
    pieces = np.maximum(1, -(-lengths // max_events))
    rep = np.repeat(np.arange(len(segments)), pieces)
    k = np.arange(len(rep)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    lo = segments.lo[rep] + k * max_events
    hi = np.minimum(lo + max_events, segments.hi[rep])
    last = k == pieces[rep] - 1
    return Segments(
        client=segments.client[rep],
        lo=lo,
        hi=hi,
        prev=np.where(k == 0, segments.prev[rep], lo - 1),
        window_start_s=segments.window_start_s[rep],
        survival_end_s=np.where(last, segments.survival_end_s[rep], np.nan),
    )


def cold_starts(
    store: EventStore, segments: Segments, per_client: int, per_hour: float, max_events: int, rng
) -> Segments:
    """Segments that begin with a start token at uniformly random times of each client's window.

    Sampling starts stream segments anywhere (also where a client is idle), so
    training shows the model such starts: the first gap runs from the random
    start to the client's next event (the forward recurrence time), up to
    ``max_events`` events follow. Draws with no event before the window end are skipped.
    """
    time = store.columns["time_s"]
    parts = []
    for c, lo, hi, start, end in zip(
        segments.client, segments.lo, segments.hi, segments.window_start_s, segments.survival_end_s
    ):
        end = time[hi - 1] if np.isnan(end) else end
        n = per_client + int(per_hour * max(end - start, 0.0) / 3600.0)
        t0 = np.sort(rng.uniform(start, end, n))
        first = lo + np.searchsorted(np.asarray(time[lo:hi]), t0, side="left")
        ok = first < hi
        last = np.minimum(first[ok] + max_events, hi)
        parts.append((np.full(ok.sum(), c), first[ok], last, t0[ok], np.where(last == hi, end, np.nan)))
    cat = [np.concatenate(x) for x in zip(*parts)] if parts else [np.zeros(0)] * 5
    client, lo, hi, t0, surv = cat
    return Segments(
        client.astype(np.int64), lo.astype(np.int64), hi.astype(np.int64), np.full(len(lo), -1), t0, surv
    )


@dataclass
class LanePlan:
    """(lanes, steps) arrays: chunk ``[lo, lo + length)`` of lane b at step k."""

    lo: np.ndarray
    length: np.ndarray
    prev: np.ndarray  # input event of the chunk's first position (-1: start token)
    reset: np.ndarray  # hidden state starts fresh at this chunk
    client: np.ndarray
    window_start_s: np.ndarray
    survival_end_s: np.ndarray  # applies to the chunk's last event; NaN for none

    @property
    def n_steps(self) -> int:
        return self.lo.shape[1]

    def lanes(self, keep: slice | np.ndarray) -> LanePlan:
        return LanePlan(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))

    def padded(self, n_steps: int) -> LanePlan:
        """The plan run to ``n_steps`` with empty steps (no events): DDP ranks must take the same steps."""
        extra = n_steps - self.n_steps
        if extra <= 0:
            return self
        fill = {"length": 0, "prev": -1, "reset": True, "survival_end_s": np.nan}
        return LanePlan(
            *(
                np.concatenate([a, np.full((a.shape[0], extra), fill.get(f, 0), dtype=a.dtype)], axis=1)
                for f, a in ((f, getattr(self, f)) for f in self.__dataclass_fields__)
            )
        )


def plan_lanes(segments: Segments, n_lanes: int, chunk_len: int, rng: np.random.Generator | None) -> LanePlan:
    """Pack segments (shuffled by ``rng``; in order when None) into lanes of chunks, balancing lane lengths."""
    n_chunks = -(-(segments.hi - segments.lo) // chunk_len)
    order = np.arange(len(segments)) if rng is None else rng.permutation(len(segments))
    lane_of = np.empty(len(segments), dtype=np.int64)
    start_step = np.empty(len(segments), dtype=np.int64)
    heap = [(0, lane) for lane in range(n_lanes)]
    # Longest first onto the least-loaded lane (ties by the shuffled order).
    for s in order[np.argsort(-n_chunks[order], kind="stable")]:
        load, lane = heapq.heappop(heap)
        lane_of[s], start_step[s] = lane, load
        heapq.heappush(heap, (load + int(n_chunks[s]), lane))
    n_steps = max(1, max(load for load, _ in heap))
    rep = np.repeat(np.arange(len(segments)), n_chunks)
    k = np.arange(len(rep)) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
    lane, step = lane_of[rep], start_step[rep] + k
    lo = segments.lo[rep] + k * chunk_len
    plan = LanePlan(
        lo=np.zeros((n_lanes, n_steps), dtype=np.int64),
        length=np.zeros((n_lanes, n_steps), dtype=np.int64),
        prev=np.full((n_lanes, n_steps), -1, dtype=np.int64),
        reset=np.ones((n_lanes, n_steps), dtype=bool),
        client=np.zeros((n_lanes, n_steps), dtype=np.int64),
        window_start_s=np.zeros((n_lanes, n_steps)),
        survival_end_s=np.full((n_lanes, n_steps), np.nan),
    )
    plan.lo[lane, step] = lo
    plan.length[lane, step] = np.minimum(chunk_len, segments.hi[rep] - lo)
    plan.prev[lane, step] = np.where(k == 0, segments.prev[rep], lo - 1)
    plan.reset[lane, step] = k == 0
    plan.client[lane, step] = segments.client[rep]
    plan.window_start_s[lane, step] = segments.window_start_s[rep]
    plan.survival_end_s[lane, step] = np.where(k == n_chunks[rep] - 1, segments.survival_end_s[rep], np.nan)
    return plan


def gather_batch(store: EventStore, plan: LanePlan, step: int, chunk_len: int) -> dict[str, np.ndarray]:
    """Numpy arrays of batch ``step``: targets, their input (previous) events, items and survival.

    Keys: client, reset (B,); mask, time_s, gap_s, survival_s (B, T) with NaN where
    no survival term; ``y_<field>`` target marks and ``x_<field>`` input-event
    marks (B, T); x_time_s, x_gap_s, x_start (B, T); ``items_<m>`` and
    ``items_<m>_owner`` (flat items of target events and their flat b * T + t).
    """
    n_lanes = plan.lo.shape[0]
    pos = np.arange(chunk_len)
    length = plan.length[:, step]
    mask = pos[None, :] < length[:, None]
    idx = np.where(mask, plan.lo[:, step, None] + pos[None, :], 0)
    prev = np.where(pos[None, :] == 0, plan.prev[:, step, None], idx - 1)
    prev = np.where(mask, prev, -1)
    client = plan.client[:, step]
    start = prev < 0
    prev_safe = np.where(start, 0, prev)
    window_start = plan.window_start_s[:, step, None]
    # One read per column for all the rows a batch needs (a disk column maps its file per read).
    t, t_prev, t_before = _take(store.columns["time_s"], idx, prev_safe, np.maximum(prev_safe - 1, 0))
    t_prev = np.where(start, window_start, t_prev)
    first = store.offsets[store.client_of(prev_safe)] == prev_safe
    own_gap = np.maximum(t_prev - np.where(first, store.window_start_s, t_before), 0.0)
    out = {
        "client": client,
        "reset": plan.reset[:, step].copy(),
        "mask": mask,
        "time_s": t,
        "gap_s": np.where(mask, np.maximum(t - t_prev, 0.0), 0.0),
        "x_time_s": np.where(mask, t_prev, 0.0),
        "x_gap_s": np.where(start, 0.0, own_gap),
        "x_start": start & mask,
    }
    last = np.clip(length - 1, 0, None)
    surv = np.full((n_lanes, chunk_len), np.nan)
    has = ~np.isnan(plan.survival_end_s[:, step]) & (length > 0)
    rows = np.nonzero(has)[0]
    surv[rows, last[rows]] = np.maximum(plan.survival_end_s[rows, step] - t[rows, last[rows]], 0.0)
    out["survival_s"] = surv
    for name, col in store.columns.items():
        if name == "time_s":
            continue
        y, x = _take(col, idx, prev_safe)
        out[f"y_{name}"] = np.where(mask, y, 0)
        out[f"x_{name}"] = np.where(start | ~mask, 0, x)
    for m, (offsets, tokens) in store.items.items():
        first, last = _take(offsets, idx[mask], idx[mask] + 1)
        counts = last - first
        flat_owner = np.nonzero(mask.reshape(-1))[0]
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        out[f"items_{m}"] = np.asarray(tokens[np.repeat(first, counts) + within]).astype(np.int64)
        out[f"items_{m}_owner"] = np.repeat(flat_owner, counts)
    return out


def _take(column, *indices: np.ndarray) -> list[np.ndarray]:
    """``column[i]`` for each index array, read at once."""
    values = np.asarray(column[np.concatenate([i.reshape(-1) for i in indices])])
    ends = np.cumsum([i.size for i in indices])[:-1]
    return [v.reshape(i.shape) for v, i in zip(np.split(values, ends), indices)]
