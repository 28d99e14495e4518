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

from servegen_ml.data.chunks import Segments, cut_long, gather_batch, plan_lanes
from servegen_ml.data.events import EventStore


MIN_STEPS_PER_EPOCH = 32


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


class LaneDataset(IterableDataset):
    """Yields whole batches (dicts of tensors) of one epoch's lane plan for this rank."""

    def __init__(self, store: EventStore, segments: Segments, lanes: int, chunk_len: int, seed: int, shuffle: bool):
        self.store, self.segments = store, segments
        self.lanes, self.chunk_len, self.seed, self.shuffle = lanes, chunk_len, seed, shuffle
        self.epoch = 0

    def _plan(self, world: int):
        total_chunks = int((-(-(self.segments.hi - self.segments.lo) // self.chunk_len)).sum())
        # Small traces get fewer lanes, so an epoch still takes several optimizer steps.
        n_lanes = max(world, min(self.lanes * world, total_chunks // MIN_STEPS_PER_EPOCH))
        n_lanes -= n_lanes % world
        # Cut long streams so the busiest lane is not much longer than the average.
        max_events = max(1, -(-total_chunks // n_lanes)) * self.chunk_len
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        return plan_lanes(cut_long(self.segments, max_events), n_lanes, self.chunk_len, rng)

    def __iter__(self):
        rank, world = _rank_world()
        plan = self._plan(world).lanes(slice(rank, None, world))
        self.epoch += 1
        for step in range(plan.n_steps):
            yield to_tensors(gather_batch(self.store, plan, step, self.chunk_len))


class EventDataModule(L.LightningDataModule):
    def __init__(
        self, store: EventStore, train: Segments, val: Segments | None, lanes: int = 64, chunk_len: int = 128, seed: int = 0
    ):
        super().__init__()
        self.store, self.train, self.val = store, train, val
        self.lanes, self.chunk_len, self.seed = lanes, chunk_len, seed

    def train_dataloader(self):
        ds = LaneDataset(self.store, self.train, self.lanes, self.chunk_len, self.seed, shuffle=True)
        return DataLoader(ds, batch_size=None)

    def val_dataloader(self):
        if self.val is None:
            return []
        ds = LaneDataset(self.store, self.val, self.lanes, self.chunk_len, self.seed, shuffle=False)
        return DataLoader(ds, batch_size=None)
