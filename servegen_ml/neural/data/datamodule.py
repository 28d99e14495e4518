"""Lightning DataModule: lanes of chunks from this rank's shard of the event store.

The data is prepared in ``setup``, once Lightning has started the process group:
each rank builds the store of its own clients only (:meth:`StoreSource.build`),
and the statistics that shape the model (rate curves, normalizers) are summed
over the ranks' shards, so every rank holds the same whole-trace values and
builds the same model. Validation blocks are times of the whole trace's window,
the same on every rank. Each epoch a rank packs its own segments into lanes
(shuffled by (seed, epoch) and, under DDP, its rank); ranks pad their plans to
the longest with empty steps, so all take the same number of optimizer steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from servegen_ml.neural.data.chunks import (
    LanePlan,
    Segments,
    cold_starts,
    cut_long,
    gather_batch,
    plan_lanes,
)
from servegen_ml.neural.data.client_marks import ClientMarks, fit_client_marks
from servegen_ml.neural.data.events import EventStore, StoreSource
from servegen_ml.neural.data.normalizers import Normalizers, fit_normalizers, rate_curves
from servegen_ml.neural.data.slots import spread_within_slots
from servegen_ml.neural.data.validation import ValidationBlocks
from servegen_ml.neural.rate_level import fit_rate_level, unit_clock

MIN_STEPS_PER_EPOCH = 32


def rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce(x: np.ndarray, op: str = "sum") -> np.ndarray:
    """``x`` summed (``op="sum"``) or maximized (``"max"``) over the ranks; ``x`` itself without DDP."""
    if rank_world()[1] == 1:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x).copy())
    reduce_op = torch.distributed.ReduceOp.SUM if op == "sum" else torch.distributed.ReduceOp.MAX
    torch.distributed.all_reduce(t, op=reduce_op)
    return t.numpy()


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


@dataclass
class PreparedData:
    """One rank's training data and the whole trace's statistics (the same on every rank)."""

    store: EventStore  # this rank's shard (every client's row, only its own clients' events)
    train: Segments
    val: Segments
    norm: Normalizers
    client_marks: ClientMarks  # each client's training marginals, where its head offsets start
    train_rates: np.ndarray  # (C, bins) req/s of training events (validation bins interpolated)
    train_level: np.ndarray  # (C, bins) rate level fitted on them
    rates: np.ndarray  # (C, bins) req/s of all events
    model: dict  # MarkedTPP constructor arguments
    shard_events: list[int]  # events in each rank's shard
    val_events: int  # in the whole trace


def prepare_shard(
    source: StoreSource,
    blocks: ValidationBlocks,
    model: dict,
    span_s: float,
    bin_s: float,
    max_spikes: int,
    min_spike_share: float,
) -> PreparedData:
    """Build this rank's shard and the statistics of the whole trace (summed over ranks).

    ``model``: the MarkedTPP arguments that do not depend on the data's statistics (spikes are added).
    """
    rank, world = rank_world()
    store = source.build(rank, world)
    spread_within_slots(store, source.time_quantum_s)
    # Every statistic below is per client (zero rows for other ranks' clients) or a sum: the totals
    # over ranks are the whole trace's.
    train_rates = all_reduce(rate_curves(store, bin_s, span_s, blocks))
    train_level = fit_rate_level(train_rates, bin_s, span_s)
    norm = fit_normalizers(
        store,
        unit_clock(train_level, bin_s, span_s),
        blocks,
        max_spikes,
        min_spike_share,
        reduce=all_reduce,
        gap_resolution_s=model.get("gap_resolution_s", 0.0),
    )
    rates = all_reduce(rate_curves(store, bin_s, span_s))
    train, val = blocks.split(store)
    shard_events = np.zeros(world, dtype=np.int64)
    shard_events[rank] = store.n_events
    return PreparedData(
        store=store,
        train=train,
        val=val,
        norm=norm,
        client_marks=fit_client_marks(store, norm, blocks).reduce(all_reduce),
        train_rates=train_rates,
        train_level=train_level,
        rates=rates,
        model={**model, "spikes": norm.spikes},
        shard_events=all_reduce(shard_events).tolist(),
        val_events=int(source.n_events - norm.train_events.sum()),
    )


class LaneDataset(IterableDataset):
    """Yields whole batches (dicts of tensors) of one epoch's lane plans of this rank's segments.

    Training epochs add ``cold_starts`` segments (random start times, see
    :func:`servegen_ml.neural.data.chunks.cold_starts`): ``per_client`` per client plus
    ``per_hour`` per hour of its window, redrawn every epoch, each of at most ``cold_len``
    events. They go to batches of their own, ``cold_len`` events long with as many more lanes
    (the same events per batch), interleaved with the others: a short segment in a
    ``chunk_len`` slot would cost a whole slot. ``lane_group`` (0, 1 for cold starts) tells
    the module which lanes' hidden state a batch carries on.
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
        cold_len: int = 32,
    ):
        self.store, self.segments = store, segments
        self.lanes, self.chunk_len, self.seed, self.shuffle = lanes, chunk_len, seed, shuffle
        self.cold_per_client, self.cold_per_hour, self.cold_len = cold_per_client, cold_per_hour, cold_len
        self.epoch = 0

    def _plans(self, rank: int, world: int) -> list[tuple[LanePlan, int]]:
        """(lane plan, chunk length) of each lane group."""
        # One process keeps its historical stream; DDP ranks shuffle their own shards differently.
        key = [self.seed, self.epoch] if world == 1 else [self.seed, self.epoch, rank]
        rng = np.random.default_rng(key) if self.shuffle else None
        plans = [(self._plan(self.segments, self.lanes, self.chunk_len, rng, cut=True), self.chunk_len)]
        if self.cold_per_client or self.cold_per_hour:
            cold_len = min(self.cold_len, self.chunk_len)
            cold = cold_starts(
                self.store, self.segments, self.cold_per_client, self.cold_per_hour, cold_len, rng
            )
            lanes = max(1, self.lanes * self.chunk_len // cold_len)
            plans.append((self._plan(cold, lanes, cold_len, rng, cut=False), cold_len))
        return plans

    @staticmethod
    def _plan(segments: Segments, lanes: int, chunk_len: int, rng, cut: bool) -> LanePlan:
        total_chunks = int((-(-(segments.hi - segments.lo) // chunk_len)).sum())
        # Small traces get fewer lanes, so an epoch still takes several optimizer steps.
        n_lanes = max(1, min(lanes, total_chunks // MIN_STEPS_PER_EPOCH))
        if cut:
            # Cut long streams so the busiest lane is not much longer than the average.
            segments = cut_long(segments, max(1, -(-total_chunks // n_lanes)) * chunk_len)
        return plan_lanes(segments, n_lanes, chunk_len, rng)

    def __iter__(self):
        rank, world = rank_world()
        plans = self._plans(rank, world)
        steps = all_reduce(np.array([p.n_steps for p, _ in plans]), "max")
        plans = [(p.padded(int(n)), length) for (p, length), n in zip(plans, steps)]
        self.epoch += 1
        taken = [0] * len(plans)
        for group in interleave(steps):
            plan, length = plans[group]
            batch = gather_batch(self.store, plan, taken[group], length)
            taken[group] += 1
            yield to_tensors({**batch, "lane_group": np.array(group)})


def interleave(steps) -> np.ndarray:
    """Group of each step when groups of ``steps[g]`` steps are spread evenly over one epoch."""
    position = np.concatenate([(np.arange(n) + 0.5) / n for n in steps])
    group = np.repeat(np.arange(len(steps)), steps)
    return group[np.argsort(position, kind="stable")]


class EventDataModule(L.LightningDataModule):
    """Prepares this rank's shard in ``setup`` (:func:`prepare_shard`); ``prepared`` holds it afterwards."""

    def __init__(
        self,
        prepare,
        lanes: int = 64,
        chunk_len: int = 128,
        seed: int = 0,
        cold_per_client: int = 16,
        cold_per_hour: float = 1.0,
        cold_len: int = 32,
    ):
        super().__init__()
        self.prepare = prepare  # () -> PreparedData, run once the process group exists
        self.prepared: PreparedData | None = None
        self.lanes, self.chunk_len, self.seed = lanes, chunk_len, seed
        self.cold_per_client, self.cold_per_hour, self.cold_len = cold_per_client, cold_per_hour, cold_len

    def setup(self, stage: str) -> None:
        if self.prepared is None:
            self.prepared = self.prepare()

    def train_dataloader(self):
        p = self.prepared
        ds = LaneDataset(
            p.store,
            p.train,
            self.lanes,
            self.chunk_len,
            self.seed,
            True,
            self.cold_per_client,
            self.cold_per_hour,
            self.cold_len,
        )
        return DataLoader(ds, batch_size=None)

    def val_dataloader(self):
        p = self.prepared
        if p.val_events == 0:
            return []
        return DataLoader(
            LaneDataset(p.store, p.val, self.lanes, self.chunk_len, self.seed, False), batch_size=None
        )
