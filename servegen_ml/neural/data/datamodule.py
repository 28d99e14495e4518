"""Lightning DataModule: lanes of chunks from an :class:`EventStore` (memory-mapped for large traces).

Each epoch reshuffles which segments go to which lane. Under DDP every rank
plans the same lanes (same seed) and takes every ``world``-th lane, so all
ranks run the same number of steps.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from servegen_ml.neural.data.chunks import (
    Segments,
    cold_starts,
    concat_segments,
    cut_long,
    gather_batch,
    plan_lanes,
)
from servegen_ml.neural.data.events import EventStore

MIN_STEPS_PER_EPOCH = 32


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


class LaneDataset(IterableDataset):
    """Yields whole batches (dicts of tensors) of one epoch's lane plan for this rank.

    Training epochs add ``cold_starts`` segments (random start times, see
    :func:`servegen_ml.neural.data.chunks.cold_starts`): ``per_client`` per client plus
    ``per_hour`` per hour of its window, one chunk each, redrawn every epoch.
    """

    def __init__(
        self,
        store: EventStore,
        segments: Segments,
        lanes: int,
        chunk_len: int,
        seed: int,
        shuffle: bool,
        cold_per_client: int = 0,
        cold_per_hour: float = 0.0,
    ):
        self.store, self.segments = store, segments
        self.lanes, self.chunk_len, self.seed, self.shuffle = lanes, chunk_len, seed, shuffle
        self.cold_per_client, self.cold_per_hour = cold_per_client, cold_per_hour
        self.epoch = 0

    def _plan(self, world: int):
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        total_chunks = int((-(-(self.segments.hi - self.segments.lo) // self.chunk_len)).sum())
        # Small traces get fewer lanes, so an epoch still takes several optimizer steps.
        n_lanes = max(world, min(self.lanes * world, total_chunks // MIN_STEPS_PER_EPOCH))
        n_lanes -= n_lanes % world
        # Cut long streams so the busiest lane is not much longer than the average.
        max_events = max(1, -(-total_chunks // n_lanes)) * self.chunk_len
        segments = cut_long(self.segments, max_events)
        if self.cold_per_client or self.cold_per_hour:
            cold = cold_starts(
                self.store, self.segments, self.cold_per_client, self.cold_per_hour, self.chunk_len, rng
            )
            segments = concat_segments(segments, cold)
        return plan_lanes(segments, n_lanes, self.chunk_len, rng)

    def __iter__(self):
        rank, world = _rank_world()
        plan = self._plan(world).lanes(slice(rank, None, world))
        self.epoch += 1
        for step in range(plan.n_steps):
            yield to_tensors(gather_batch(self.store, plan, step, self.chunk_len))


class EventDataModule(L.LightningDataModule):
    def __init__(
        self,
        store: EventStore,
        train: Segments,
        val: Segments | None,
        lanes: int = 64,
        chunk_len: int = 128,
        seed: int = 0,
        cold_per_client: int = 16,
        cold_per_hour: float = 1.0,
    ):
        super().__init__()
        self.store, self.train, self.val = store, train, val
        self.lanes, self.chunk_len, self.seed = lanes, chunk_len, seed
        self.cold_per_client, self.cold_per_hour = cold_per_client, cold_per_hour

    def train_dataloader(self):
        ds = LaneDataset(
            self.store,
            self.train,
            self.lanes,
            self.chunk_len,
            self.seed,
            True,
            self.cold_per_client,
            self.cold_per_hour,
        )
        return DataLoader(ds, batch_size=None)

    def val_dataloader(self):
        if self.val is None:
            return []
        ds = LaneDataset(self.store, self.val, self.lanes, self.chunk_len, self.seed, False)
        return DataLoader(ds, batch_size=None)
