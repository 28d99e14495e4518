"""Train the neural conversation heads (:mod:`servegen_ml.conversations.neural.heads`) with Lightning.

Every request of the trace is a turn that may be followed (the turn table of
:mod:`servegen_ml.conversations.neural.table`; a conversation belongs to its
opener's client). Time-based split (the latest ``val_fraction`` of the span
validates; the TPP's interleaved blocks are not used here): turns before
``split_s`` train, with the window ending at ``split_s`` (a successor after it
is unseen, so that turn is censored there); later turns validate, with the
window ending at the trace's end. Early stopping on the validation NLL per
turn; the best epoch's weights are kept.

The table is never held whole: normalizers, burn-in and opener counts are
passes over it in blocks, and every batch reads its rows from it (the same
batches, in the same order, as shuffled in-memory arrays would give).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader, Dataset, Sampler

from servegen_ml.conversations.empirical import MAX_BURN_IN_S
from servegen_ml.conversations.fit import BURN_IN_QUANTILE, linear_quantiles
from servegen_ml.conversations.neural.features import (
    feature_names,
    output_condition,
    turn_features,
)
from servegen_ml.conversations.neural.heads import ConversationHeads
from servegen_ml.conversations.neural.table import TURN, TurnTable
from servegen_ml.core.configs import NeuralConfig
from servegen_ml.core.errors import TrainingDivergedError
from servegen_ml.core.interrupt import fit_interruptibly
from servegen_ml.core.spec import DAY_S, TIME_RESOLUTION_S, WEEK_S
from servegen_ml.neural.data.events import rank_within
from servegen_ml.neural.data.normalizers import frequent_values
from servegen_ml.neural.training.fit import torch_threads, trainer_spec
from servegen_ml.stats.lattice import LatticeCounter

# New-token values that become exact spikes: at most this many, each at least this share of follow-ups.
MAX_NEW_SPIKES, MIN_NEW_SPIKE_SHARE = 32, 0.005


def gap_jitter_counts(gaps_s: np.ndarray, quantum_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Jitter values (ms) of gaps around their lattice points and how many gaps have each (sorted by value)."""
    if quantum_s <= 0 or len(gaps_s) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    k = np.floor(gaps_s / quantum_s + 0.5)
    j = np.round((gaps_s - k * quantum_s) / TIME_RESOLUTION_S).astype(np.int64)
    return np.unique(j, return_counts=True)


class _Moments:
    """Mean and std of values given in blocks, as numpy's ``mean`` and ``std`` compute them (the same floats
    when they come in one block): sums first, then squared deviations from the mean (a second pass)."""

    def __init__(self):
        self.n, self.total, self.squares = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        self.n += len(x)
        if len(x):
            self.total += np.add.reduce(np.asarray(x, np.float64))

    def add_deviations(self, x: np.ndarray) -> None:
        if len(x):
            d = np.asarray(x, np.float64) - self.mean
            self.squares += np.add.reduce(d * d)

    @property
    def mean(self) -> float:
        return float(self.total / self.n) if self.n else 0.0

    def result(self, empty: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
        if self.n == 0:
            return empty
        return self.mean, float(max(np.sqrt(self.squares / self.n), 0.05))


class _TurnBlock:
    """One block of the turn table on the learned timeline, with the training and follow-up masks."""

    def __init__(self, turn, nxt, origin_s: float):
        self.turn, self.next = turn, nxt
        self.timeline_s = turn["timestamp"] - origin_s
        self.next_timeline_s = nxt["timestamp"] - origin_s

    @property
    def followed(self) -> np.ndarray:
        return ~np.isnan(self.next_timeline_s)

    def followed_before(self, end_s: float) -> np.ndarray:
        return np.nan_to_num(self.next_timeline_s, nan=np.inf) < end_s


def _turn_blocks(table: TurnTable, origin_s: float, lo: int = 0, hi: int | None = None):
    for _, turn, nxt in table.blocks(lo, hi):
        yield _TurnBlock(turn, nxt, origin_s)


def training_rows(table: TurnTable, origin_s: float, split_s: float) -> int:
    """Turns before ``split_s``: the table is in time order, so they are its first rows."""
    return sum(int((b.timeline_s < split_s).sum()) for b in _turn_blocks(table, origin_s))


def fit_turn_normalizers(
    table: TurnTable, origin_s: float, n_train: int, split_s: float, span_s: float, harmonics: tuple[int, int]
) -> dict:
    """Feature and head normalizers from the ``n_train`` turns before ``split_s`` (all turns when none are),
    two passes over the table in blocks."""
    n_train = n_train or table.rows
    followed_end = split_s
    if not any(b.followed_before(split_s).any() for b in _turn_blocks(table, origin_s, 0, n_train)):
        followed_end = np.inf  # no follow-up before the split: every followed training turn counts

    def followed(b: _TurnBlock) -> np.ndarray:
        return b.followed & b.followed_before(followed_end)

    moments = {k: _Moments() for k in ("out", "in", "gap", "new", "next_out")}
    hist_new, hist_out = np.zeros(1 << 20, dtype=np.int64), np.zeros(1 << 20, dtype=np.int64)
    lattice = LatticeCounter()
    n_gaps, n_positive, n_zero, max_new, max_out = 0, 0, 0, 0, 0

    def values(b: _TurnBlock):
        f = followed(b)
        gaps = (b.next_timeline_s - b.timeline_s)[f]
        return {
            "out": np.log1p(b.turn["output_tokens"]),
            "in": np.log1p(b.turn["input_tokens"]),
            "gap": np.log(gaps[gaps > 0]),
            "new": np.log1p(b.next["new_tokens"][f]),
            "next_out": np.log1p(b.next["output_tokens"][f]),
        }, gaps

    for b in _turn_blocks(table, origin_s, 0, n_train):
        v, gaps = values(b)
        for k, m in moments.items():
            m.add(v[k])
        f = followed(b)
        new, next_out = b.next["new_tokens"][f], b.next["output_tokens"][f]
        hist_new += np.bincount(np.minimum(new, (1 << 20) - 1), minlength=1 << 20)
        hist_out += np.bincount(np.minimum(next_out, (1 << 20) - 1), minlength=1 << 20)
        max_new, max_out = max(max_new, int(new.max(initial=0))), max(max_out, int(next_out.max(initial=0)))
        lattice.add(b.timeline_s)
        n_gaps += len(gaps)
        n_positive += int((gaps > 0).sum())
        n_zero += int((gaps <= 0).sum())
    for b in _turn_blocks(table, origin_s, 0, n_train):
        v, _ = values(b)
        for k, m in moments.items():
            m.add_deviations(v[k])
    quantum_s = lattice.quantum()
    jitter: dict[int, int] = {}
    for b in _turn_blocks(table, origin_s, 0, n_train):
        _, gaps = values(b)
        for value, count in zip(*gap_jitter_counts(gaps, quantum_s), strict=True):
            jitter[value] = jitter.get(value, 0) + count
    jitter_ms = sorted(jitter)
    total_jitter = sum(jitter.values())

    def frequent(hist, n, top):
        hist = hist[: top + 1] if n else np.zeros(1, np.int64)
        spikes = frequent_values(hist, MAX_NEW_SPIKES, MIN_NEW_SPIKE_SHARE)
        # Shares the heads start from (add-half keeps them inside (0, 1)).
        return spikes, [float((hist[v] + 0.5) / (n + 1.0)) for v in spikes]

    n_followed = moments["new"].n
    spikes, spike_shares = frequent(hist_new, n_followed, min(max_new, (1 << 20) - 1))
    output_spikes, output_shares = frequent(hist_out, n_followed, min(max_out, (1 << 20) - 1))
    out_mean, out_std = moments["out"].result()
    in_mean, in_std = moments["in"].result()
    # No positive gap: the gap head starts from log 1 s, as from a single zero.
    gap_mean, gap_std = moments["gap"].result() if n_positive else (0.0, 0.05)
    new_mean, new_std = moments["new"].result()
    follow_out_mean, follow_out_std = moments["next_out"].result()
    max_position = max(int(np.asarray(t["position"]).max(initial=1)) for _, t, _ in table.blocks())
    return {
        "turn_output_mean": out_mean,
        "turn_output_std": out_std,
        "turn_input_mean": in_mean,
        "turn_input_std": in_std,
        "gap_log_mean": gap_mean,
        "gap_log_std": gap_std,
        "new_mean": new_mean,
        "new_std": new_std,
        "new_tokens_spikes": spikes,
        "new_tokens_spike_shares": spike_shares,
        "max_new_tokens": int(max(2 * max_new, 16)),
        # The follow-up output head (log1p mean and std of follow-ups' outputs, frequent values, cap).
        "output_mean": follow_out_mean,
        "output_std": follow_out_std,
        "output_spikes": output_spikes,
        "output_spike_shares": output_shares,
        "max_output_tokens": int(max(2 * max_out, 16)),
        "gap_zero_share": float((n_zero + 0.5) / (n_gaps + 1.0)),
        "gap_quantum_s": quantum_s,
        "gap_jitter_ms": [int(v) for v in jitter_ms],
        "gap_jitter_prob": [float(jitter[v] / total_jitter) for v in jitter_ms],
        "max_position": float(max(max_position, 1)),
        "span_s": float(span_s),
        "day_harmonics": int(harmonics[0]),
        "week_harmonics": int(harmonics[1]),
    }


class _TurnRows(Dataset):
    """Rows ``[lo, hi)`` of the turn table as the heads' inputs (features x, output condition, followed, and
    of the turn after: gap_s, new_tokens, output_tokens; censor_s), one batch per fetch: the table is read
    per batch, never held whole. ``end_s``: where the set's window ends (a later successor is censored)."""

    def __init__(self, table: TurnTable, lo: int, hi: int, end_s: float, inputs: _HeadInputs):
        self.table, self.lo, self.hi, self.end_s, self.inputs = table, lo, hi, float(end_s), inputs

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitems__(self, index) -> tuple[torch.Tensor, ...]:
        rows = self.lo + np.asarray(index, dtype=np.int64)
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
            (_, turn, nxt), *_ = self.table.blocks(int(rows[0]), int(rows[-1]) + 1)  # a range: one read
        else:
            turn, nxt = self.table.take(rows)
        b = _TurnBlock(turn, nxt, self.inputs.origin_s)
        x = turn_features(
            self.inputs.client_rows[self.inputs.label_row[turn["client"]]],
            turn["position"],
            turn["input_tokens"],
            turn["output_tokens"],
            b.timeline_s,
            self.inputs.norm,
        )
        condition = output_condition(nxt["new_tokens"], nxt["input_tokens"], self.inputs.norm)
        followed = b.followed & b.followed_before(self.end_s)
        gap = np.nan_to_num(b.next_timeline_s - b.timeline_s, nan=0.0)
        arrays = (
            x,
            condition,
            followed,
            np.where(followed, gap, 0.0),
            np.where(followed, nxt["new_tokens"], 0),
            np.where(followed, nxt["output_tokens"], 0),
            np.maximum(self.end_s - b.timeline_s, 0.0),
        )
        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


@dataclass
class _HeadInputs:
    origin_s: float
    client_rows: np.ndarray  # (C + 1, D) the heads' client inputs
    label_row: np.ndarray  # row of client_rows of each table client label
    norm: dict


def _early_stopping(monitor: str, spec: dict) -> EarlyStopping:
    return EarlyStopping(monitor=monitor, mode="min", patience=int(spec["patience"]), strict=False)


def _whole_batch(batch):
    return batch


# The heads' default batch: BATCH_MIN turns, doubled while an epoch would take more than
# EPOCH_BATCHES batches, up to BATCH_MAX. A small MLP's step costs about the same from 128 to a
# few thousand rows (Python and autograd overhead): 9 M turns took 16 min an epoch at 128 on 2 cores,
# 91.5 M turns 15 min at 8,192.
BATCH_MIN, BATCH_MAX, EPOCH_BATCHES = 128, 8192, 8192


def default_batch(turns: int) -> int:
    """The heads' turns per batch for ``turns`` training turns (``NeuralConfig.conversation_batch`` unset)."""
    batch = BATCH_MIN
    while batch < BATCH_MAX and turns > EPOCH_BATCHES * batch:
        batch *= 2
    return batch


# Past this many training turns the epoch's order is shuffled in windows (_EpochShuffle): chunks
# of SHUFFLE_CHUNK consecutive turns in random order, SHUFFLE_WINDOW chunks shuffled together.
SHUFFLE_CHUNK = 1 << 20
SHUFFLE_WINDOW = 8


class _EpochShuffle(Sampler):
    """Batches of a new random order of ``n`` rows each epoch.

    Up to ``window * chunk`` rows, with the generator calls of a shuffled DataLoader's
    RandomSampler and BatchSampler, so training sees the same batches: the order, then a second
    permutation the sampler draws once the first runs out (before a partial last batch, else only
    if asked past the last one). Past that, so that memory does not grow with the rows (a whole
    order is 4 bytes a row, 0.36 GB at 90 M turns, twice while the second permutation is drawn),
    chunks of ``chunk`` consecutive rows are taken in random order, ``window`` chunks at a time,
    and each window's rows are shuffled together; rows left short of a batch carry over to the
    next window. Every row still comes exactly once an epoch."""

    def __init__(
        self,
        n: int,
        batch: int,
        generator: torch.Generator,
        chunk: int = SHUFFLE_CHUNK,
        window: int = SHUFFLE_WINDOW,
    ):
        self.n, self.batch, self.generator = n, batch, generator
        self.chunk, self.window = chunk, window

    def __len__(self) -> int:
        return -(-self.n // self.batch)

    def __iter__(self):
        if self.n <= self.chunk * self.window:
            yield from self._whole()
        else:
            yield from self._windows()

    def _full_batches(self, rows: np.ndarray):
        for lo in range(0, len(rows) - len(rows) % self.batch, self.batch):
            yield rows[lo : lo + self.batch]

    def _whole(self):
        order = torch.randperm(self.n, generator=self.generator, dtype=torch.int32).numpy()
        yield from self._full_batches(order)
        torch.randperm(self.n, generator=self.generator, dtype=torch.int32)
        if self.n % self.batch:
            yield order[self.n - self.n % self.batch :]

    def _windows(self):
        n_chunks = -(-self.n // self.chunk)
        chunks = torch.randperm(n_chunks, generator=self.generator).numpy()
        carry = np.zeros(0, dtype=np.int32)
        for w in range(0, n_chunks, self.window):
            rows = [
                np.arange(c * self.chunk, min(self.n, (c + 1) * self.chunk), dtype=np.int32)
                for c in chunks[w : w + self.window]
            ]
            rows = np.concatenate([carry, *rows])
            rows = rows[torch.randperm(len(rows), generator=self.generator, dtype=torch.int32).numpy()]
            yield from self._full_batches(rows)
            carry = rows[len(rows) - len(rows) % self.batch :]
        if len(carry):
            yield carry


class _InOrder(Sampler):
    def __init__(self, n: int, batch: int):
        self.n, self.batch = n, batch

    def __len__(self) -> int:
        return -(-self.n // self.batch)

    def __iter__(self):
        for lo in range(0, self.n, self.batch):
            yield np.arange(lo, min(self.n, lo + self.batch))


def train_conversation_heads(
    table: TurnTable,
    inputs: _HeadInputs,
    n_train: int,
    split_s: float,
    window_end_s: float,
    config: NeuralConfig,
    trainer: dict,
    seed: int,
) -> tuple[dict, dict[str, np.ndarray], dict]:
    """(constructor arguments, state dict as numpy arrays, training summary) of trained heads: the first
    ``n_train`` turns (before ``split_s``) train, the rest validate (all train when none is before)."""
    if n_train == 0:
        train, val = _TurnRows(table, 0, table.rows, window_end_s, inputs), None
    else:
        train = _TurnRows(table, 0, n_train, split_s, inputs)
        val = _TurnRows(table, n_train, table.rows, window_end_s, inputs) if n_train < table.rows else None
    norm = inputs.norm
    followed = sum(
        int((b.followed & b.followed_before(train.end_s)).sum())
        for b in _turn_blocks(table, inputs.origin_s, 0, len(train))
    )
    n_features = len(
        feature_names(inputs.client_rows.shape[1], norm["day_harmonics"], norm["week_harmonics"])
    )
    args = {
        "n_features": n_features,
        "hidden": int(config.head_hidden),
        "time_components": int(config.time_components),
        "mark_components": int(config.mark_components),
        "n_spikes": len(norm["new_tokens_spikes"]),
        "n_output_spikes": len(norm["output_spikes"]),
        "n_jitter": len(norm["gap_jitter_ms"]),
    }
    monitor = "val_nll" if val is not None else "train_nll"
    with torch_threads(trainer.get("num_threads")):
        torch.manual_seed(seed)
        heads = ConversationHeads(**args)
        heads.set_normalizers(norm, followed / len(train))
        heads.compute_dtype = torch.float32
        module = _TurnModule(heads, config.lr, config.weight_decay, monitor)
        generator = torch.Generator().manual_seed(seed)
        batch = config.conversation_batch or default_batch(len(train))
        shuffled = _EpochShuffle(len(train), batch, generator)
        loaders = [DataLoader(train, batch_sampler=shuffled, generator=generator, collate_fn=_whole_batch)]
        if val is not None:
            # Its own generator, as before: a loader draws seeds from it (else from torch's global one).
            val_generator = torch.Generator().manual_seed(seed)
            in_order = _InOrder(len(val), 1 << 16)
            loaders.append(
                DataLoader(val, batch_sampler=in_order, generator=val_generator, collate_fn=_whole_batch)
            )
        # The TPP's early stopping, or none where the trainer turns it off (callbacks.early_stopping: null).
        stopping = trainer_spec(trainer)["callbacks"].get("early_stopping")
        callbacks = [] if stopping is None else [_early_stopping(monitor, stopping)]
        trainer_obj = L.Trainer(
            accelerator=trainer.get("accelerator", "cpu"),
            devices=1,
            max_epochs=int(trainer.get("max_epochs") or 20),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=callbacks,
        )
        started = time.perf_counter()
        fit_interruptibly(trainer_obj, module, *loaders)
        seconds = time.perf_counter() - started
        if module.best_state is not None:
            heads.load_state_dict(module.best_state)
    weights = {k: v.detach().cpu().numpy() for k, v in heads.state_dict().items()}
    summary = {
        "epochs": int(trainer_obj.current_epoch),
        "monitor": monitor,
        "best_nll_per_turn": module.best_score,
        "train_turns": len(train),
        "val_turns": 0 if val is None else len(val),
        "batch_turns": batch,
        "fit_seconds": round(seconds, 3),  # the heads' epochs, validation included
    }
    return args, weights, summary


class _TurnModule(L.LightningModule):
    """Minimizes the censored NLL per turn; keeps the best epoch's weights (by ``monitor``) in memory."""

    def __init__(self, heads, lr: float, weight_decay: float, monitor: str):
        super().__init__()
        self.heads, self.lr, self.weight_decay, self.monitor = heads, lr, weight_decay, monitor
        self.best_state, self.best_score = None, None
        self._sums = {"train": [0.0, 0], "val": [0.0, 0]}

    def _nll(self, batch, stage):
        lp = self.heads.log_likelihood(*batch)
        total = float(-lp.detach().sum())
        if not np.isfinite(total):
            raise TrainingDivergedError("the conversation heads", stage, self.global_step, total)
        self._sums[stage][0] += total
        self._sums[stage][1] += len(lp)
        return -lp.mean()

    def training_step(self, batch, batch_idx):
        return self._nll(batch, "train").float()

    def validation_step(self, batch, batch_idx):
        self._nll(batch, "val")

    def _epoch_end(self, stage):
        total, n = self._sums[stage]
        self._sums[stage] = [0.0, 0]
        if n == 0:
            return
        score = total / n
        self.log(f"{stage}_nll", score)
        if f"{stage}_nll" == self.monitor and (self.best_score is None or score < self.best_score):
            self.best_score = score
            self.best_state = {k: v.detach().clone() for k, v in self.heads.state_dict().items()}

    def on_validation_epoch_end(self):
        self._epoch_end("val")

    def on_train_epoch_end(self):
        self._epoch_end("train")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def time_harmonics(state) -> tuple[int, int]:
    """The TPP's (day, week) Fourier harmonics where the learned span shows them, else none: a trace shorter
    than a day cannot show a daily cycle, and features that only drift across it would learn a trend."""
    day = int(state.model["day_harmonics"]) if state.span_s >= DAY_S else 0
    week = int(state.model["week_harmonics"]) if state.span_s >= WEEK_S else 0
    return day, week


def client_rows(state) -> np.ndarray:
    """(C + 1, D) the heads' client inputs: client vectors standardized over clients (traffic-weighted),
    then the mean client (for clients the model has never seen)."""
    real = state.client_vectors()
    vectors = np.vstack([real, real.mean(0)[None, :]])
    w = np.maximum(np.asarray(state.traffic, np.float64), 0.0) + 1e-9
    mean = (vectors[:-1] * w[:, None]).sum(0) / w.sum()
    std = np.sqrt((((vectors[:-1] - mean) ** 2) * w[:, None]).sum(0) / w.sum())
    # A constant entry (one client) carries nothing: it stays 0.
    return ((vectors - mean) / np.where(std > 1e-6, std, 1.0)).astype(np.float32)


def fit_neural_conversations(table: TurnTable, state, follow_up_marks, config: NeuralConfig, trainer: dict):
    """A :class:`~servegen_ml.conversations.neural.model.NeuralConversationModel` for a fitted neural state.

    ``table``: the trace's turns (:mod:`servegen_ml.conversations.neural.table`); ``state`` is the TPP
    fitted on the trace's openers (its clients, embeddings, timeline is reused); ``follow_up_marks(model)``
    the generator's follow-up marks (:data:`~servegen_ml.conversations.sampling.MarksFn`) with a
    conversation model (used to measure mean turns per client).
    """
    from servegen_ml.conversations.neural.model import (
        FORMAT,
        VERSION,
        NeuralConversationModel,
        simulated_mean_turns,
    )

    rows = client_rows(state)
    label_row = pd.Index(state.client_ids).get_indexer(pd.Index(table.labels, dtype=object))
    label_row = np.where(label_row < 0, len(state.client_ids), label_row)  # unseen: the mean client's row
    origin_s = state.origin_s
    window_end_s = table.last_s + TIME_RESOLUTION_S - origin_s
    # The conversation heads validate on the latest share of the span (the TPP's blocks are not used here).
    split_s = (1.0 - config.val_fraction) * window_end_s
    n_train = training_rows(table, origin_s, split_s)
    norm = fit_turn_normalizers(table, origin_s, n_train, split_s, state.span_s, time_harmonics(state))
    inputs = _HeadInputs(origin_s, rows, label_row, norm)
    args, weights, summary = train_conversation_heads(
        table, inputs, n_train, split_s, window_end_s, config, trainer, config.seed
    )
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "clients": list(state.client_ids),
        "heads": args,
        "normalizers": norm,
        "burn_in_s": _burn_in_s(table, origin_s),
        "training": summary,
        "client_rows": "standardized (embedding, log-gap mean, log-gap std, log mean rate) per client; "
        "the last row is the mean client",
        "units": {"gap": "s, arrival to arrival", "new_tokens": "tokens", "burn_in_s": "s"},
    }
    weights = {**weights, "client_rows": rows, "mean_turns": np.ones(len(rows))}
    draft = NeuralConversationModel(meta, weights)
    code = draft.client_codes(np.array(table.labels, dtype=object))  # per table label
    counts = np.zeros(draft.population + 1, dtype=np.int64)
    for _, turn, _ in table.blocks():
        counts += np.bincount(code[turn["client"][turn["position"] == 1]], minlength=len(counts))
    counts = counts[: draft.population]

    def openers_at(picked: list[np.ndarray], batch: int) -> Iterator[pd.DataFrame]:
        return _openers_at(table, code, picked, origin_s, batch)

    mean_turns = simulated_mean_turns(draft, counts, openers_at, follow_up_marks(draft), config.seed)
    summary["mean_turns_simulated"] = float(mean_turns[-1])
    return NeuralConversationModel(meta, {**weights, "mean_turns": mean_turns})


def _burn_in_s(table: TurnTable, origin_s: float) -> float:
    """The 99th percentile of opener-to-turn time over the follow-ups (at most MAX_BURN_IN_S; 0 without any),
    from the largest 1 % of them kept across blocks."""
    n = table.follow_ups
    if n == 0:
        return 0.0
    keep = n - int(np.floor((n - 1) * BURN_IN_QUANTILE))
    top = np.zeros(0)
    for _, turn, _ in table.blocks():
        follow = turn["position"] > 1
        offset_s = (turn["timestamp"][follow] - origin_s) - (turn["opener_timestamp"][follow] - origin_s)
        top = np.concatenate([top, offset_s])
        if len(top) > keep:
            top = np.partition(top, len(top) - keep)[len(top) - keep :]
    top = np.sort(top)
    burn = linear_quantiles(lambda i: top[i - (n - len(top))], n, np.array([BURN_IN_QUANTILE]))[0]
    return float(min(burn, MAX_BURN_IN_S))


def _openers_at(
    table: TurnTable, code: np.ndarray, picked: list[np.ndarray], origin_s: float, batch: int
) -> Iterator[pd.DataFrame]:
    """The openers ``picked[c]`` (ranks among client code c's openers, in arrival order), in arrival order,
    in frames of ``batch`` rows."""
    radix = table.rows + 1
    wanted = np.sort(np.concatenate([c * radix + np.asarray(k, np.int64) for c, k in enumerate(picked)]))
    if len(wanted) == 0:
        return
    seen = np.zeros(len(picked) + 1, dtype=np.int64)
    pending = np.zeros(0, TURN)
    for _, turn, _ in table.blocks():
        opener = turn[turn["position"] == 1]
        c = code[opener["client"]]
        by_client = np.argsort(c, kind="stable")
        rank = np.empty(len(c), dtype=np.int64)
        rank[by_client] = rank_within(c[by_client]) + seen[c[by_client]]
        seen += np.bincount(c, minlength=len(seen))
        key = c * radix + rank
        at = np.minimum(np.searchsorted(wanted, key), len(wanted) - 1)
        pending = np.concatenate([pending, opener[wanted[at] == key]])
        while len(pending) >= batch:
            yield _opener_frame(table, pending[:batch], origin_s)
            pending = pending[batch:]
    if len(pending):
        yield _opener_frame(table, pending, origin_s)


def _opener_frame(table: TurnTable, turns: np.ndarray, origin_s: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "client_id": np.asarray(table.labels, dtype=object)[turns["client"]],
            "timestamp": turns["timestamp"] - origin_s,
            "input_tokens": turns["input_tokens"],
            "output_tokens": turns["output_tokens"],
        }
    )
