"""Train the neural conversation heads (:mod:`servegen_ml.conversations.neural.heads`) with Lightning.

Every request of the trace is a turn that may be followed (roles from
:func:`~servegen_ml.conversations.empirical.conversation_roles`; a conversation
belongs to its opener's client). Time-based split (the latest ``val_fraction``
of the span validates; the TPP's interleaved blocks are not used here): turns
before ``split_s`` train, with the window ending at ``split_s`` (a successor
after it is unseen, so that turn is censored there); later turns validate,
with the window ending at the trace's end. Early stopping on the validation
NLL per turn; the best epoch's weights are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader, TensorDataset

from servegen_ml.conversations.empirical import ConversationRoles, burn_in_s
from servegen_ml.conversations.neural.features import (
    feature_names,
    output_condition,
    turn_features,
)
from servegen_ml.conversations.neural.heads import ConversationHeads
from servegen_ml.core.configs import NeuralConfig
from servegen_ml.core.interrupt import fit_interruptibly
from servegen_ml.core.spec import DAY_S, TIME_RESOLUTION_S, WEEK_S
from servegen_ml.neural.data.normalizers import frequent_values
from servegen_ml.neural.training.fit import torch_threads, trainer_spec
from servegen_ml.stats.lattice import timestamp_quantum

# New-token values that become exact spikes: at most this many, each at least this share of follow-ups.
MAX_NEW_SPIKES, MIN_NEW_SPIKE_SHARE = 32, 0.005


@dataclass
class TurnTable:
    """One row per request, as a turn that may be followed."""

    client: np.ndarray  # (n,) row of the conversation's client in the client table
    position: np.ndarray  # (n,) 1-based
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    timeline_s: np.ndarray  # (n,) learned-timeline position of the turn
    next_timeline_s: np.ndarray  # (n,) ... of the turn after it, NaN for a last turn
    new_tokens: np.ndarray  # (n,) new tokens of the turn after it (0 for a last turn)
    next_input: np.ndarray  # (n,) prompt of the turn after it (0 for a last turn)
    next_output: np.ndarray  # (n,) output of the turn after it (0 for a last turn)
    window_end_s: float  # learned-timeline position where the trace's window ends

    @property
    def followed(self) -> np.ndarray:
        return ~np.isnan(self.next_timeline_s)


def turn_table(
    trace, roles: ConversationRoles, client: np.ndarray, origin_s: float, window_end_s: float
) -> TurnTable:
    """Turns of ``trace``; ``client`` (n,) each row's client-table row (its conversation's client)."""
    t = trace["timestamp"].to_numpy(np.float64) - origin_s
    inp = trace["input_tokens"].to_numpy(np.int64)
    out = trace["output_tokens"].to_numpy(np.int64)
    follow = np.flatnonzero(~roles.is_opener)
    prev = roles.predecessor[follow]
    next_t = np.full(len(t), np.nan)
    next_t[prev] = t[follow]
    new, next_in, next_out = (np.zeros(len(t), dtype=np.int64) for _ in range(3))
    new[prev] = np.maximum(inp[follow] - inp[prev] - out[prev], 0)
    next_in[prev], next_out[prev] = inp[follow], out[follow]
    client = client[roles.opener_row]
    return TurnTable(client, roles.position, inp, out, t, next_t, new, next_in, next_out, window_end_s)


def gap_jitter(gaps_s: np.ndarray, quantum_s: float) -> tuple[list[int], list[float]]:
    """Jitter values (ms) of gaps around their lattice points and their shares (sorted by value)."""
    if quantum_s <= 0 or len(gaps_s) == 0:
        return [], []
    k = np.floor(gaps_s / quantum_s + 0.5)
    j = np.round((gaps_s - k * quantum_s) / TIME_RESOLUTION_S).astype(np.int64)
    values, counts = np.unique(j, return_counts=True)
    return [int(v) for v in values], [float(c) for c in counts / counts.sum()]


def fit_turn_normalizers(table: TurnTable, split_s: float, span_s: float, harmonics: tuple[int, int]) -> dict:
    """Feature and head normalizers from the turns before ``split_s`` (all turns when none are)."""
    train = table.timeline_s < split_s
    if not train.any():
        train = np.ones(len(train), dtype=bool)
    followed = train & (np.nan_to_num(table.next_timeline_s, nan=np.inf) < split_s)
    if not followed.any():
        followed = train & table.followed
    gaps = (table.next_timeline_s - table.timeline_s)[followed]
    log_gaps = np.log(gaps[gaps > 0]) if (gaps > 0).any() else np.zeros(1)
    new = table.new_tokens[followed]
    next_out = table.next_output[followed]

    def frequent(values):
        hist = (
            np.bincount(np.minimum(values, (1 << 20) - 1), minlength=1)
            if len(values)
            else np.zeros(1, np.int64)
        )
        spikes = frequent_values(hist, MAX_NEW_SPIKES, MIN_NEW_SPIKE_SHARE)
        # Shares the heads start from (add-half keeps them inside (0, 1)).
        return spikes, [float((hist[v] + 0.5) / (len(values) + 1.0)) for v in spikes]

    def moments(x):
        x = np.asarray(x, np.float64)
        return float(x.mean()) if len(x) else 0.0, float(max(x.std(), 0.05)) if len(x) else 1.0

    spikes, spike_shares = frequent(new)
    output_spikes, output_shares = frequent(next_out)
    quantum_s = timestamp_quantum(table.timeline_s[train])
    jitter_ms, jitter_prob = gap_jitter(gaps, quantum_s)
    out_mean, out_std = moments(np.log1p(table.output_tokens[train]))
    in_mean, in_std = moments(np.log1p(table.input_tokens[train]))
    gap_mean, gap_std = moments(log_gaps)
    new_mean, new_std = moments(np.log1p(new))
    follow_out_mean, follow_out_std = moments(np.log1p(next_out))
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
        "max_new_tokens": int(max(2 * int(new.max(initial=0)), 16)),
        # The follow-up output head (log1p mean and std of follow-ups' outputs, frequent values, cap).
        "output_mean": follow_out_mean,
        "output_std": follow_out_std,
        "output_spikes": output_spikes,
        "output_spike_shares": output_shares,
        "max_output_tokens": int(max(2 * int(next_out.max(initial=0)), 16)),
        "gap_zero_share": float((np.sum(gaps <= 0) + 0.5) / (len(gaps) + 1.0)),
        "gap_quantum_s": quantum_s,
        "gap_jitter_ms": jitter_ms,
        "gap_jitter_prob": jitter_prob,
        "max_position": float(max(table.position.max(initial=1), 1)),
        "span_s": float(span_s),
        "day_harmonics": int(harmonics[0]),
        "week_harmonics": int(harmonics[1]),
    }


def training_arrays(
    table: TurnTable, client_rows: np.ndarray, norm: dict, split_s: float
) -> tuple[dict, dict]:
    """(train, validation) arrays: features x, output condition, followed, and of the turn after: gap_s,
    new_tokens, output_tokens; censor_s (module docstring)."""
    x = turn_features(
        client_rows[table.client],
        table.position,
        table.input_tokens,
        table.output_tokens,
        table.timeline_s,
        norm,
    )
    condition = output_condition(table.new_tokens, table.next_input, norm)
    gap = np.nan_to_num(table.next_timeline_s - table.timeline_s, nan=0.0)
    sets = []
    for rows, end_s in (
        (table.timeline_s < split_s, split_s),
        (table.timeline_s >= split_s, table.window_end_s),
    ):
        followed = table.followed & (np.nan_to_num(table.next_timeline_s, nan=np.inf) < end_s)
        sets.append(
            {
                "x": x[rows],
                "condition": condition[rows],
                "followed": followed[rows],
                "gap_s": np.where(followed, gap, 0.0)[rows],
                "new_tokens": np.where(followed, table.new_tokens, 0)[rows],
                "output_tokens": np.where(followed, table.next_output, 0)[rows],
                "censor_s": np.maximum(end_s - table.timeline_s, 0.0)[rows],
            }
        )
    return sets[0], sets[1]


def train_conversation_heads(
    table: TurnTable,
    client_rows: np.ndarray,
    norm: dict,
    config: NeuralConfig,
    trainer: dict,
    split_s: float,
    seed: int,
) -> tuple[dict, dict[str, np.ndarray], dict]:
    """(constructor arguments, state dict as numpy arrays, training summary) of trained heads."""
    train, val = training_arrays(table, client_rows, norm, split_s)
    if len(train["x"]) == 0:
        train, val = val, {k: v[:0] for k, v in val.items()}
    n_features = len(feature_names(client_rows.shape[1], norm["day_harmonics"], norm["week_harmonics"]))
    args = {
        "n_features": n_features,
        "hidden": int(config.head_hidden),
        "time_components": int(config.time_components),
        "mark_components": int(config.mark_components),
        "n_spikes": len(norm["new_tokens_spikes"]),
        "n_output_spikes": len(norm["output_spikes"]),
        "n_jitter": len(norm["gap_jitter_ms"]),
    }
    monitor = "val_nll" if len(val["x"]) else "train_nll"
    with torch_threads(trainer.get("num_threads")):
        torch.manual_seed(seed)
        heads = ConversationHeads(**args)
        heads.set_normalizers(norm, float(train["followed"].mean()))
        heads.compute_dtype = torch.float32
        module = _TurnModule(heads, config.lr, config.weight_decay, monitor)
        batch = int(config.conversation_batch)
        loaders = [_loader(train, batch, seed, shuffle=True)]
        if len(val["x"]):
            loaders.append(_loader(val, 1 << 16, seed, shuffle=False))
        patience = int(trainer_spec(trainer)["callbacks"]["early_stopping"]["patience"])
        trainer_obj = L.Trainer(
            accelerator=trainer.get("accelerator", "cpu"),
            devices=1,
            max_epochs=int(trainer.get("max_epochs") or 20),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[EarlyStopping(monitor=monitor, mode="min", patience=patience, strict=False)],
        )
        fit_interruptibly(trainer_obj, module, *loaders)
        if module.best_state is not None:
            heads.load_state_dict(module.best_state)
    weights = {k: v.detach().cpu().numpy() for k, v in heads.state_dict().items()}
    summary = {
        "epochs": int(trainer_obj.current_epoch),
        "monitor": monitor,
        "best_nll_per_turn": module.best_score,
        "train_turns": len(train["x"]),
        "val_turns": len(val["x"]),
    }
    return args, weights, summary


def _loader(arrays: dict, batch: int, seed: int, shuffle: bool) -> DataLoader:
    names = ("x", "condition", "followed", "gap_s", "new_tokens", "output_tokens", "censor_s")
    tensors = [torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in names]
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(*tensors), batch_size=batch, shuffle=shuffle, generator=generator)


class _TurnModule(L.LightningModule):
    """Minimizes the censored NLL per turn; keeps the best epoch's weights (by ``monitor``) in memory."""

    def __init__(self, heads, lr: float, weight_decay: float, monitor: str):
        super().__init__()
        self.heads, self.lr, self.weight_decay, self.monitor = heads, lr, weight_decay, monitor
        self.best_state, self.best_score = None, None
        self._sums = {"train": [0.0, 0], "val": [0.0, 0]}

    def _nll(self, batch, stage):
        lp = self.heads.log_likelihood(*batch)
        self._sums[stage][0] += float(-lp.detach().sum())
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
    then the population's mean client (for clients the model has never seen)."""
    vectors = np.vstack([state.client_vectors(), state.population.mean()[None, :]])
    w = np.maximum(np.asarray(state.traffic, np.float64), 0.0) + 1e-9
    mean = (vectors[:-1] * w[:, None]).sum(0) / w.sum()
    std = np.sqrt((((vectors[:-1] - mean) ** 2) * w[:, None]).sum(0) / w.sum())
    # A constant entry (one client) carries nothing: it stays 0.
    return ((vectors - mean) / np.where(std > 1e-6, std, 1.0)).astype(np.float32)


def fit_neural_conversations(
    trace, roles: ConversationRoles, state, follow_up_marks, config: NeuralConfig, trainer: dict
):
    """A :class:`~servegen_ml.conversations.neural.model.NeuralConversationModel` for a fitted neural state.

    ``state`` is the TPP fitted on the trace's openers (its clients, embeddings,
    timeline is reused); ``follow_up_marks(model)`` the
    generator's follow-up marks (:data:`~servegen_ml.conversations.sampling.MarksFn`)
    with a conversation model (used to measure mean turns per client).
    """
    from servegen_ml.conversations.neural.model import (
        FORMAT,
        VERSION,
        NeuralConversationModel,
        simulated_mean_turns,
    )

    rows = client_rows(state)
    code = pd.Index(state.client_ids).get_indexer(trace["client_id"].astype(str))
    code = np.where(code < 0, len(state.client_ids), code)  # unseen: the mean client's row
    t = trace["timestamp"].to_numpy(np.float64)
    window_end_s = float(t.max()) + TIME_RESOLUTION_S - state.origin_s
    table = turn_table(trace, roles, code, state.origin_s, window_end_s)
    # The conversation heads validate on the latest share of the span (the TPP's blocks are not used here).
    split_s = (1.0 - config.val_fraction) * window_end_s
    harmonics = time_harmonics(state)
    norm = fit_turn_normalizers(table, split_s, state.span_s, harmonics)
    args, weights, summary = train_conversation_heads(
        table, rows, norm, config, trainer, split_s, config.seed
    )
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "clients": list(state.client_ids),
        "heads": args,
        "normalizers": norm,
        "burn_in_s": burn_in_s(table.timeline_s, roles),
        "training": summary,
        "client_rows": "standardized (embedding, log-gap mean, log-gap std, log mean rate) per client; "
        "the last row is the population's mean client",
        "units": {"gap": "s, arrival to arrival", "new_tokens": "tokens", "burn_in_s": "s"},
    }
    weights = {**weights, "client_rows": rows, "mean_turns": np.ones(len(rows))}
    openers = trace.iloc[np.flatnonzero(roles.is_opener)].reset_index(drop=True)
    openers = openers.assign(timestamp=openers["timestamp"].to_numpy(np.float64) - state.origin_s)
    draft = NeuralConversationModel(meta, weights)
    mean_turns = simulated_mean_turns(draft, openers, follow_up_marks(draft), config.seed)
    summary["mean_turns_simulated"] = float(mean_turns[-1])
    return NeuralConversationModel(meta, {**weights, "mean_turns": mean_turns})
