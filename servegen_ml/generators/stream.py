"""Generation in time units: bounded memory for any duration, the same rows for any block size or worker count.

The spec's span is cut into *units* of ``unit_s`` seconds (of the openers'
timeline; a generator's :attr:`~servegen_ml.generators.base.Generator.stream_unit_s`).
Unit ``u`` draws its openers with its own generator, seeded from
``SeedSequence(seed, spawn_key=(sign, |u|))``, so a unit's rows depend only on
the spec, the seed and ``u``: workers sample units independently and the main
process consumes them in unit order.

Conversations: a unit samples its openers' whole conversations; turns that
fall past the unit's end are carried and merged into the unit they fall in.
Conversations open from ``burn_in_s`` before the spec's start (units with
negative index, whose own turns are dropped), and ids number conversations in
order of their first row in the window. Rows of a unit are written sorted by
(timestamp, turn, unit that drew them, row within it).

A *block* is a whole number of units handed to the writer at once; the bytes
written do not depend on it (:mod:`servegen_ml.export` writes fixed Parquet
row groups and carries conversation chains across blocks).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from servegen_ml.conversations.sampling import MarksFn, UpsamplePlan, conversations_from
from servegen_ml.conversations.turns import TurnModel
from servegen_ml.core.clients import source_clients
from servegen_ml.core.errors import UserError
from servegen_ml.core.memory import release_freed_memory
from servegen_ml.core.spec import GenerationSpec
from servegen_ml.stats.lattice import on_lattice
from servegen_ml.trace.schema import STRING_DTYPE, ordered_columns

# Spawn-key tag of the per-unit seeds; setup draws (new clients) use SETUP_KEY.
UNIT_KEY = 1
SETUP_KEY = (0,)
_INTERNAL = ("_conversation", "_continues", "_unit", "_row", "_tau")


@dataclass
class UnitSource:
    """What a generator samples unit by unit, fixed for the whole spec.

    ``sample_openers(sub_spec, rng)`` returns a sorted canonical trace for a
    piece of ``plan.opener_spec`` (timestamps since the piece's start). With
    ``conversations`` (a :class:`~servegen_ml.conversations.turns.TurnModel`)
    those are conversation openers whose follow-ups ``follow_up_marks`` marks.
    ``time_quantum_s`` > 0: output times are moved down to multiples of it from the
    spec's start (:mod:`servegen_ml.stats.lattice`: a trace stamped in slots).
    """

    plan: UpsamplePlan
    sample_openers: Callable[[GenerationSpec, np.random.Generator], pd.DataFrame]
    conversations: TurnModel | None = None
    follow_up_marks: MarksFn | None = None
    time_quantum_s: float = 0.0


@dataclass
class Block:
    """Rows of one or more consecutive units: a canonical trace in output order, and for each row
    whether a later turn of its conversation follows (all False without conversations)."""

    frame: pd.DataFrame
    continues: np.ndarray


def plain_plan(spec: GenerationSpec) -> UpsamplePlan:
    """The plan of a generator without conversations: the spec itself."""
    return UpsamplePlan(spec, 1.0, 0.0)


def setup_rng(seed: int) -> np.random.Generator:
    """The generator for draws made once per spec (new clients), apart from every unit's."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=SETUP_KEY))


def unit_rng(seed: int, unit: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(UNIT_KEY, int(unit < 0), abs(unit))))


def unit_range(source: UnitSource, unit_s: float | None) -> range:
    """Unit indices: negative ones cover the burn-in, 0.. the spec's span (in the openers' timeline).

    ``unit_s=None``: one unit covers everything, burn-in included.
    """
    if unit_s is None:
        return range(1)
    plan = source.plan
    horizon_s = plan.opener_spec.duration_s - plan.burn_in_s
    return range(-math.ceil(plan.burn_in_s / unit_s - 1e-9), max(math.ceil(horizon_s / unit_s - 1e-9), 1))


def _unit_bounds(plan: UpsamplePlan, unit: int, unit_s: float | None) -> tuple[float, float]:
    """[start, end) of a unit in the openers' timeline (s since the openers' spec start)."""
    total = plan.opener_spec.duration_s
    if unit_s is None:
        return 0.0, total
    lo = max(plan.burn_in_s + unit * unit_s, 0.0)
    hi = min(plan.burn_in_s + (unit + 1) * unit_s, total)
    return lo, hi


def unit_rows(source: UnitSource, unit: int, unit_s: float | None, rng: np.random.Generator) -> pd.DataFrame:
    """Everything unit ``unit`` draws: its openers and, with conversations, all their later turns.

    Internal columns: ``_tau`` (s in the openers' timeline), and with
    conversations ``_conversation`` (the opener's row), ``_continues``.
    """
    plan = source.plan
    spec = plan.opener_spec
    lo, hi = _unit_bounds(plan, unit, unit_s)
    rate = spec.rate
    if rate.kind == "curve":
        rate = dataclasses.replace(rate, curve_t_s=tuple(t - lo for t in rate.curve_t_s))
    sub = dataclasses.replace(spec, start_s=spec.start_s + lo, duration_s=hi - lo, rate=rate)
    openers = source.sample_openers(sub, rng)
    tau = openers["timestamp"].to_numpy(np.float64) + lo
    if source.conversations is None:
        return openers.assign(_tau=tau)
    df, conversation, continues = conversations_from(
        openers.assign(timestamp=tau), source.conversations, plan, source.follow_up_marks, rng
    )
    return df.assign(
        _tau=df["timestamp"].to_numpy(np.float64), _conversation=conversation, _continues=continues
    )


class _Emitter:
    """Turns units' rows (in unit order) into output rows: carry, burn-in, time factor, conversation ids."""

    def __init__(self, source: UnitSource, unit_s: float | None):
        self.plan = source.plan
        self.duration_s = (self.plan.opener_spec.duration_s - self.plan.burn_in_s) / self.plan.time_factor
        self.unit_s = unit_s
        self.conversational = source.conversations is not None
        self.time_quantum_s = source.time_quantum_s
        self.carry: pd.DataFrame | None = None
        self.next_id = 0

    def emit(self, unit: int, rows: pd.DataFrame, last: bool) -> Block:
        plan = self.plan
        if not self.conversational:
            return self._finish(rows, np.zeros(len(rows), dtype=bool))
        rows = rows.iloc[np.flatnonzero(rows["_tau"].to_numpy() >= plan.burn_in_s)]
        rows = rows.assign(
            _conversation=_key(unit, rows["_conversation"]),
            _unit=np.full(len(rows), unit, dtype=np.int64),
            _row=np.arange(len(rows), dtype=np.int64),
            _id=np.full(len(rows), -1, dtype=np.int64),
        )
        pool = rows if self.carry is None else pd.concat([self.carry, rows], ignore_index=True)
        end = math.inf if last or self.unit_s is None else plan.burn_in_s + (unit + 1) * self.unit_s
        tau = pool["_tau"].to_numpy()
        due = pool.iloc[np.flatnonzero(tau < end)]
        self.carry = pool.iloc[np.flatnonzero(tau >= end)].reset_index(drop=True)
        if unit < 0:
            due = due.iloc[:0]
        t = self._output_time(due["_tau"].to_numpy())
        order = np.lexsort(
            (due["_row"].to_numpy(), due["_unit"].to_numpy(), due["turn"].to_numpy(np.int64), t)
        )
        due = due.iloc[order].reset_index(drop=True)
        ids = self._number_conversations(due)
        frame = due.assign(conversation_id=pd.array(ids.astype(str), dtype=STRING_DTYPE))
        return self._finish(frame, due["_continues"].to_numpy(bool))

    def _output_time(self, tau: np.ndarray) -> np.ndarray:
        t = (tau - self.plan.burn_in_s) / self.plan.time_factor
        return on_lattice(
            np.minimum(np.maximum(t, 0.0), np.nextafter(self.duration_s, 0.0)), self.time_quantum_s
        )

    def _number_conversations(self, due: pd.DataFrame) -> np.ndarray:
        """Ids in order of each conversation's first row in the window; later rows reuse them."""
        key = due["_conversation"].to_numpy(np.int64)
        ids = due["_id"].to_numpy(np.int64).copy()
        fresh = ids < 0
        first = np.zeros(len(key), dtype=bool)
        _, first_at = np.unique(key[fresh], return_index=True)
        first[np.flatnonzero(fresh)[first_at]] = True
        ids[first] = self.next_id + np.arange(int(first.sum()))
        self.next_id += int(first.sum())
        new_keys, new_ids = key[first], ids[first]
        sorter = np.argsort(new_keys)
        new_keys, new_ids = new_keys[sorter], new_ids[sorter]
        ids[fresh] = _lookup(new_keys, new_ids, key[fresh])
        if len(self.carry) and len(new_keys):
            carried = self.carry["_id"].to_numpy(np.int64).copy()
            open_ = carried < 0
            found = _lookup(new_keys, new_ids, self.carry["_conversation"].to_numpy(np.int64)[open_])
            carried[np.flatnonzero(open_)] = found
            self.carry["_id"] = carried
        return ids

    def _finish(self, frame: pd.DataFrame, continues: np.ndarray) -> Block:
        t = self._output_time(frame["_tau"].to_numpy())
        frame = frame.assign(timestamp=t)
        kept = [c for c in ordered_columns(frame.columns) if not c.startswith("_")]
        return Block(frame[kept].reset_index(drop=True), continues)


def _key(unit: int, conversation: pd.Series) -> np.ndarray:
    """A conversation key unique across units (units above -2**20, fewer than 2**40 openers per unit)."""
    return (np.int64(unit) + (1 << 20)) * (1 << 40) + conversation.to_numpy(np.int64)


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """values of ``keys`` in ``sorted_keys``, -1 where absent."""
    if len(sorted_keys) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    i = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.where(sorted_keys[i] == keys, values[i], -1)


def default_workers() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:
        return max(os.cpu_count() or 1, 1)


def check_block_s(block_s: float, unit_s: float) -> int:
    """Units per block for ``block_s`` (a positive whole multiple of the unit)."""
    units = block_s / unit_s
    if not (block_s > 0 and math.isfinite(block_s)) or abs(units - round(units)) > 1e-9 or round(units) < 1:
        raise UserError(f"block_s={block_s:g}: must be a positive whole multiple of the unit ({unit_s:g} s)")
    return int(round(units))


def generate_blocks(
    source: UnitSource,
    seed: int,
    unit_s: float | None,
    units_per_block: int = 1,
    workers: int = 1,
    unit_generator: Callable[[int], np.random.Generator] | None = None,
    rebuild: tuple | None = None,
) -> Iterator[Block]:
    """The workload of ``source`` as blocks of ``units_per_block`` units, in time order.

    ``workers`` > 1 samples units in that many processes (at most 2 x workers
    units in flight), each rebuilding the source from ``rebuild`` = (generator,
    spec) with the same setup seed. ``unit_generator(u)`` replaces the per-unit
    seeding (``Generator.sample`` passes its caller's generator for a one-unit span).
    """
    units = unit_range(source, unit_s)
    if workers > 1 and (unit_generator is not None or rebuild is None):
        raise ValueError("parallel generation seeds every unit itself and needs (generator, spec) to rebuild")
    if workers > 1 and len(units) > 1:
        # The workers sample every unit; this process only orders, numbers and writes: no model kept here.
        source = _ordering_only(source)
        release_freed_memory()
    rng_of = unit_generator or (lambda u: unit_rng(seed, u))
    emitter = _Emitter(source, unit_s)
    pending: list[Block] = []
    for unit, rows in _sampled_units(source, units, unit_s, seed, rng_of, workers, rebuild):
        block = emitter.emit(unit, rows, unit == units[-1])
        if unit < 0:
            continue
        pending.append(block)
        if len(pending) == units_per_block or unit == units[-1]:
            yield _concat(pending)
            pending = []


# Stands for the turn model in a process that only orders rows (the workers hold the model).
_TURNS_IN_WORKERS = object()


def _ordering_only(source: UnitSource) -> UnitSource:
    """What the main process of a parallel run needs of ``source``: the plan and whether turns follow."""

    def sampled_in_workers(sub: GenerationSpec, rng: np.random.Generator) -> pd.DataFrame:
        raise RuntimeError("in a parallel run the workers sample every unit")

    turns = None if source.conversations is None else _TURNS_IN_WORKERS
    return UnitSource(source.plan, sampled_in_workers, turns, None, source.time_quantum_s)


def _concat(blocks: list[Block]) -> Block:
    if len(blocks) == 1:
        return blocks[0]
    frames = [b.frame for b in blocks if len(b.frame)] or [blocks[0].frame]
    return Block(pd.concat(frames, ignore_index=True), np.concatenate([b.continues for b in blocks]))


_WORKER_STATE: dict = {}


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint directory and its digest: what workers load instead of a pickled generator."""

    path: Path
    digest: str

    def load(self):
        from servegen_ml.generators.base import checkpoint_digest, load_generator

        if checkpoint_digest(self.path) != self.digest:
            raise UserError(f"{self.path}: the checkpoint changed on disk while generating from it")
        return load_generator(self.path)


def _exit_with_parent() -> None:
    """End this worker when the process that started it dies, even by SIGKILL.

    A forkserver worker holds the write ends of its own task queue and of the forkserver's
    liveness pipe, so after its parent dies it would wait on the task queue forever, keeping the
    forkserver and the caller's output pipes open. Its parent sentinel becomes readable then.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_init(gen, spec: GenerationSpec, unit_s: float) -> None:
    _exit_with_parent()
    if isinstance(gen, CheckpointRef):
        gen = gen.load()
    _WORKER_STATE.update(source=gen.unit_source(spec, setup_rng(spec.seed)), unit_s=unit_s, seed=spec.seed)


def _worker_unit(unit: int) -> pd.DataFrame:
    from threadpoolctl import threadpool_limits

    # Workers share the cores: one BLAS thread each.
    with threadpool_limits(limits=1, user_api="blas"):
        s = _WORKER_STATE
        return unit_rows(s["source"], unit, s["unit_s"], unit_rng(s["seed"], unit))


def _sampled_units(source, units: range, unit_s: float, seed: int, rng_of, workers: int, rebuild):
    """(unit, rows) in unit order, sampled here or by ``workers`` processes."""
    if workers <= 1 or len(units) <= 1:
        from threadpoolctl import threadpool_limits

        for unit in units:
            # The sampling steps' matrix products are small: one BLAS thread is faster.
            with threadpool_limits(limits=1, user_api="blas"):
                rows = unit_rows(source, unit, unit_s, rng_of(unit))
            yield unit, rows
        return
    # Workers start from a clean forkserver (never a fork of a process that may run torch's threads) and
    # rebuild the source from the pickled generator; the seeds are per unit, so which worker runs a unit is moot.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["servegen_ml.generators.base"])
    gen, spec = rebuild
    with ProcessPoolExecutor(
        min(workers, len(units)), mp_context=context, initializer=_worker_init, initargs=(gen, spec, unit_s)
    ) as pool:
        queue: deque = deque()
        it = iter(units)
        for unit in it:
            queue.append((unit, pool.submit(_worker_unit, unit)))
            if len(queue) >= 2 * workers:
                break
        while queue:
            unit, future = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(_worker_unit, nxt)))
            yield unit, future.result()


def pool_unit_source(pool, conversations, spec: GenerationSpec, rng: np.random.Generator) -> UnitSource:
    """The source of a pool-based generator (naive, parametric): clients drawn once, openers per unit."""
    from servegen_ml.conversations.pool import pool_follow_up_marks, pool_natural_opener_rates
    from servegen_ml.conversations.sampling import conversation_plan
    from servegen_ml.pool.sampling import sample_pool

    if conversations is None:
        sources = source_clients(pool.clients, spec.clients, rng)
        return UnitSource(plain_plan(spec), lambda sub, r: sample_pool(pool, sub, r, sources))
    rates = pool_natural_opener_rates(pool, spec) if spec.rate.kind in ("constant", "curve") else None
    plan = conversation_plan(spec, conversations, pool.span_s, rates)
    sources = source_clients(pool.clients, plan.opener_spec.clients, rng)
    return UnitSource(
        plan,
        lambda sub, r: sample_pool(pool, sub, r, sources),
        conversations,
        pool_follow_up_marks(pool),
    )
