"""The neural generator (docs/neural.md): a marked temporal point process per client stream.

One GRU-based model is shared by all clients and conditioned on a learned
client embedding and time-of-day / day-of-week features; its heads give the
gap to the client's next request (log-normal mixture plus a point mass for
simultaneous arrivals) and then, in order, the item counts and tokens per
item, the input (text) tokens, the output tokens and the reasoning part
(:mod:`servegen_ml.neural.model.tpp`). Training runs with Lightning on chunks of
each client's stream (:mod:`servegen_ml.neural.training.fit`); sampling runs the
trained step in numpy over many stream segments at once
(:mod:`servegen_ml.neural.sampling.segment_sampler`); ``clients=new:N`` copies a random
set of real clients (:func:`~servegen_ml.core.clients.source_clients`), each copy its own stream.

Conversations (a trace with ``conversation_id`` and follow-ups): the
point process learns the conversation openers, and conversation heads
(:mod:`servegen_ml.conversations.neural.heads`) learn whether a turn is
followed, after what gap, with how many new prompt tokens and what output;
sampling, upsampling modes and the ``conversation`` likelihood part follow
:mod:`servegen_ml.conversations.sampling` and
:mod:`servegen_ml.conversations.likelihood` (docs/conversations.md).

``fit`` takes a canonical DataFrame, or a path to a trace file, which is
streamed chunk by chunk into event column files (``store_dir``, default a
temporary directory) so traces larger than memory train; under DDP each rank
builds only its clients' shard (:mod:`servegen_ml.neural.data.datamodule`).

Likelihood (M1): ``time`` is log P(gap in [g, g + 1 ms)) under the model,
with the survival to the window end on each client's last event; the window
starts at the trace's first event, whose client streams start from their
initial state. Marks are scored in the model's conditioning order, so with
multimodal items ``input_tokens`` is log P(text tokens | items) (equal to
log P(input | items), as input = text + items) and ``total`` is the joint.
A client unknown to the model is scored as the mean client (the mean of the client vectors).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from servegen_ml.conversations.likelihood import log_prob_with_conversations
from servegen_ml.conversations.neural.marks import FollowUpMarks, follow_up_log_prob
from servegen_ml.conversations.neural.model import NeuralConversationModel
from servegen_ml.conversations.sampling import conversation_plan
from servegen_ml.core.configs import NeuralConfig
from servegen_ml.core.errors import UserError
from servegen_ml.core.spec import TIME_RESOLUTION_S, GenerationSpec
from servegen_ml.generators.base import Generator
from servegen_ml.generators.stream import UnitSource, plain_plan
from servegen_ml.neural.data.events import StoreSource, store_from_frame
from servegen_ml.neural.rate_level import flat_level
from servegen_ml.neural.sampling import ClientTable, NumpyTPP, natural_rates, sample_trace, select_clients
from servegen_ml.neural.state import NeuralState
from servegen_ml.trace.io import TraceReader
from servegen_ml.trace.validate import require_time_span

# Trace columns of each model part in log_prob's output.
PART_COLUMNS = {
    "time": "time",
    "input": "input_tokens",
    "output": "output_tokens",
    "reasoning": "reasoning_tokens",
}


class NeuralGenerator(Generator):
    kind = "neural"

    def __init__(self, trainer: dict | None = None, **config):
        """``config``: the keys of :class:`~servegen_ml.core.configs.NeuralConfig`; ``trainer``: Lightning's."""
        self.config_ = NeuralConfig(**config)
        self.trainer = dict(trainer or {"accelerator": "cpu", "devices": 1, "max_epochs": 20})
        self.state_ = None
        self.conversations_ = None
        self.rows_fitted_ = 0  # requests of the last trace file fitted (fit_file)
        self._numpy_tpp = None
        self._torch_tpp = None

    # -- learning -----------------------------------------------------------------------------

    def fit(self, trace: pd.DataFrame | str | os.PathLike, **read_options) -> NeuralGenerator:
        """Train on a canonical trace (DataFrame) or stream one from a trace file (path; ``read_options``:
        ``format``, ``chunk_rows``, ``skip_bad_rows`` and the format's options, as for ``iter_trace_chunks``)."""
        if not isinstance(trace, pd.DataFrame):
            return self.fit_file(trace, **read_options)
        require_time_span(trace)
        if "conversation_id" not in trace.columns:
            self.conversations_ = None
            return self._fit_source(StoreSource(lambda: [trace]))
        # Conversations are chained in time order (the conversation heads' batches follow the rows' order).
        t = trace["timestamp"].to_numpy(np.float64)
        if (np.diff(t) < 0).any():
            trace = trace.iloc[np.argsort(t, kind="stable")].reset_index(drop=True)
        return self._fit_with_conversations(lambda: [trace], None)

    def fit_file(self, path: str | os.PathLike, **read_options) -> NeuralGenerator:
        """Stream a trace file: its events go to column files (``store_dir``), never a DataFrame.

        With conversation ids a first pass marks each id's last turn and a second chains the turns into a
        table on disk for the conversation heads (:mod:`servegen_ml.conversations.neural.table`); the point
        process streams the openers. A file whose rows go back in time across chunks raises
        :class:`~servegen_ml.neural.data.events.UnsortedChunksError` (sort it, or fit the DataFrame).
        """
        chunks = TraceChunks(Path(path), read_options)
        with tempfile.TemporaryDirectory(prefix="servegen-store-", dir=self.config_.store_dir) as tmp:
            if not _has_conversation_ids(chunks()):
                self.conversations_ = None
                source = StoreSource(chunks, tmp)
                self.rows_fitted_ = source.n_events
                return self._fit_source(source)
            return self._fit_with_conversations(chunks, tmp)

    def _fit_with_conversations(self, chunks, directory: str | None) -> NeuralGenerator:
        """The point process on the openers, then the conversation heads on every turn (``directory``: where
        the event store and the turn table go; None: in memory)."""
        from servegen_ml.conversations.last_turns import mark_last_turns
        from servegen_ml.conversations.neural.table import build_turn_table

        turns_dir = None if directory is None else Path(directory) / "turns"
        table = build_turn_table(chunks, mark_last_turns(chunks()), turns_dir)
        self.rows_fitted_ = table.rows
        if table.follow_ups == 0:  # nothing to model beyond single requests
            self.conversations_ = None
            return self._fit_source(StoreSource(chunks, directory))
        store_dir = None if directory is None else Path(directory) / "events"
        self._fit_source(StoreSource(_rows_of(chunks, table.opener_mask), store_dir))
        if store_dir is not None:
            shutil.rmtree(store_dir)  # the openers' events are learned: free their disk
        # torch (fitting and scoring only) loads on first use, so loading and sampling never import it.
        from servegen_ml.conversations.neural.fit import fit_neural_conversations

        self.conversations_ = fit_neural_conversations(
            table, self.state_, self._follow_up_marks, self.config_, self.trainer
        )
        return self

    def _fit_source(self, source: StoreSource) -> NeuralGenerator:
        from servegen_ml.neural.training.fit import train_tpp  # torch

        result = train_tpp(source, self.config_, self.trainer, self.config_.seed)
        state = NeuralState(
            model=result.model,
            weights=result.weights,
            max_count=result.normalizers.max_count,
            normalizers=result.normalizers.to_json(),
            client_ids=list(source.client_ids),
            traffic=source.counts,
            rate_curves=result.rates,
            rate_bin_s=self.config_.rate_bin_s,
            origin_s=float(source.origin_s),
            span_s=result.span_s,
            training=result.summary,
            time_quantum_s=source.time_quantum_s,
        )
        self._set_state(state)
        return self

    def _follow_up_marks(self, conversations=None):
        """Marks of follow-up turns (conversations.neural.marks); ``conversations`` defaults to the fitted model."""
        state = self.state_
        table = self._client_inputs(len(state.client_ids) + 1)
        model = conversations if conversations is not None else self.conversations_
        return FollowUpMarks(self._numpy_tpp, table, model)

    def _set_state(self, state) -> None:
        self.state_ = state
        self._numpy_tpp = NumpyTPP(state.model, state.weights, state.max_count)
        self._torch_tpp = None

    # -- sampling -----------------------------------------------------------------------------

    def unit_source(self, spec: GenerationSpec, rng: np.random.Generator) -> UnitSource:
        self._require_fitted()
        s, state, tpp = self.config_, self.state_, self._numpy_tpp

        # New clients are drawn once per spec, so every unit samples the same ones.
        selected = select_clients(state, spec.clients, rng)

        def sample_openers(sub: GenerationSpec, unit_rng: np.random.Generator) -> pd.DataFrame:
            # The sampling step's matrix products are small: one BLAS thread is faster (much faster on a busy CPU).
            with threadpool_limits(limits=1, user_api="blas"):
                return sample_trace(state, tpp, sub, unit_rng, s.segment_events, s.warmup_events, selected)

        # Output goes on the lattice of slots the training trace was stamped in (none: unchanged).
        quantum_s = state.time_quantum_s
        if self.conversations_ is None:
            return UnitSource(plain_plan(spec), sample_openers, time_quantum_s=quantum_s)
        rates = None
        if spec.rate.kind in ("constant", "curve"):
            # The model's own opener rates: its rate level over the window.
            rates = natural_rates(state, tpp, spec, rng, selected)
        plan = conversation_plan(spec, self.conversations_, state.span_s, rates)
        return UnitSource(plan, sample_openers, self.conversations_, self._follow_up_marks(), quantum_s)

    # -- scoring ------------------------------------------------------------------------------

    def log_prob(self, trace: pd.DataFrame, window_end_s: float | None = None) -> pd.DataFrame:
        self._require_fitted()
        self._check_fields(trace)
        ts = trace["timestamp"].to_numpy(np.float64)
        if window_end_s is not None and len(ts) and window_end_s < ts.max():
            raise UserError(f"window_end_s={window_end_s} is before the last event ({ts.max()})")
        if self.conversations_ is None:
            return self._log_prob_requests(trace, window_end_s)
        return log_prob_with_conversations(
            self.conversations_,
            trace,
            window_end_s,
            self._log_prob_requests,
            score_follow_ups=self._log_prob_follow_ups,
            origin_s=self.state_.origin_s,
        )

    def _log_prob_requests(self, trace: pd.DataFrame, window_end_s: float | None) -> pd.DataFrame:
        """Every request scored as an event of its client's stream (M1; module docstring)."""
        from servegen_ml.neural.training.fit import torch_threads
        from servegen_ml.neural.training.scoring import score_store

        state = self.state_
        ts = trace["timestamp"].to_numpy(np.float64)
        end = ts.max() + TIME_RESOLUTION_S if len(ts) else 0.0
        if window_end_s is not None:
            end = max(end, float(window_end_s))
        store = store_from_frame(
            trace,
            client_ids=state.client_ids,
            layout=state.layout,
            origin_s=state.origin_s,
            window=(None, end),
        )
        inputs = self._client_inputs(len(store.client_ids))
        with torch_threads(self.trainer.get("num_threads")):
            parts = score_store(self._torch_model(), store, inputs, state.time_quantum_s)
        return _parts_frame(parts, _store_order(store, trace))

    def _log_prob_follow_ups(self, trace: pd.DataFrame, rows: np.ndarray, before, end_s: float):
        """Marks of follow-up rows (conversations.neural.marks); ``before``: the turns they follow. Time and
        input are replaced by the conversation layer."""
        from servegen_ml.neural.training.fit import torch_threads

        state = self.state_
        sub = trace.iloc[rows].reset_index(drop=True)
        store = store_from_frame(
            sub,
            client_ids=state.client_ids,
            layout=state.layout,
            origin_s=state.origin_s,
            window=(None, end_s),
        )
        inputs = self._client_inputs(len(store.client_ids))
        order = _store_order(store, sub)
        with torch_threads(self.trainer.get("num_threads")):
            parts = follow_up_log_prob(self._torch_model(), store, inputs, before.timeline_s[order])
        prompt, output = sub["input_tokens"].to_numpy(np.int64), sub["output_tokens"].to_numpy(np.int64)
        new_tokens = np.maximum(prompt - before.input_tokens - before.output_tokens, 0)
        parts["output"] = self.conversations_.log_output_after(before, new_tokens, prompt, output)[order]
        return _parts_frame(parts, order)

    def _check_fields(self, trace: pd.DataFrame) -> None:
        layout = self.state_.layout
        need = [f"{m}_tokens" for m in layout.modalities] + (
            ["reasoning_tokens"] if layout.has_reasoning else []
        )
        missing = [c for c in need if c not in trace.columns]
        if missing:
            raise UserError(f"trace lacks {missing}, which this neural model was trained with and scores")

    def _client_inputs(self, n_clients: int) -> ClientTable:
        """Per-client inputs (embedding, gap normalizer, activity, rate level, head offsets) per store client.

        Clients the model never saw are the mean client, always active at its mean rate, with no
        head offsets: the heads' shared part, started at the pooled training marginals (the
        baselines score an unseen client with the pooled distributions too). A real client's
        offsets would score it as that client's sharp length distributions.
        """
        state, w = self.state_, self.state_.weights
        real = state.client_vectors()
        extra = np.repeat(real.mean(0)[None, :], n_clients - len(real), axis=0)
        v = np.concatenate([real, extra])
        e = state.embedding_dim
        activity = np.concatenate([w["activity"], state.flat_activity(extra[:, e + 2])])
        known_level = np.asarray(w["rate_level"], dtype=np.float64)
        level = np.concatenate([known_level, flat_level(np.exp(extra[:, e + 2]), known_level.shape[1])])
        offsets = w["heads.client_offsets.weight"]
        offsets = np.concatenate([offsets, np.zeros((len(extra), offsets.shape[1]), offsets.dtype)])
        return ClientTable(v[:, :e], v[:, e], v[:, e + 1], activity, level, offsets)

    def _torch_model(self):
        if self._torch_tpp is None:
            import torch

            from servegen_ml.neural.model.tpp import MarkedTPP

            model = MarkedTPP(**self.state_.model)
            model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.state_.weights.items()})
            self._torch_tpp = model.eval()
        return self._torch_tpp

    # -- checkpoint ---------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {**self.config_.to_dict(), "trainer": dict(self.trainer)}

    def _save_state(self, directory: Path) -> None:
        self.state_.save(directory)
        if self.conversations_ is not None:
            self.conversations_.save(directory)

    def _load_state(self, directory: Path) -> None:
        self._set_state(NeuralState.load(Path(directory)))
        saved = NeuralConversationModel.saved_in(directory)
        self.conversations_ = NeuralConversationModel.load(Path(directory)) if saved else None

    @property
    def is_fitted(self) -> bool:
        return self.state_ is not None

    @property
    def clients(self) -> tuple[str, ...]:
        self._require_fitted()
        return tuple(self.state_.client_ids)


def _store_order(store, trace: pd.DataFrame) -> np.ndarray:
    """Trace row of each store event: the store holds events in (client, time) order."""
    codes = pd.Index(store.client_ids).get_indexer(trace["client_id"].astype(str))
    return np.lexsort((trace["timestamp"].to_numpy(np.float64), codes))


def _parts_frame(parts: dict[str, np.ndarray], order: np.ndarray) -> pd.DataFrame:
    """Per-part log-likelihoods in store order -> a frame in trace row order, with their total."""
    out = {}
    for name, values in parts.items():
        column = out[PART_COLUMNS.get(name, name)] = np.empty(len(order))
        column[order] = values
    df = pd.DataFrame(out)
    df["total"] = df.sum(axis=1)
    return df


class TraceChunks:
    """Re-iterable validated canonical chunks of a trace file (each call reads it again); the rows
    ``skip_bad_rows`` drops are reported once."""

    def __init__(self, path: Path, read_options: dict):
        self.path, self.read_options, self.reported = path, dict(read_options), False

    def __call__(self) -> Iterator[pd.DataFrame]:
        reader = TraceReader(self.path, **self.read_options)
        yield from reader
        report = reader.finish()
        if report.rows_dropped and not self.reported:
            warnings.warn(report.describe(), stacklevel=2)
            self.reported = True


def _has_conversation_ids(chunks: Iterable[pd.DataFrame]) -> bool:
    """Whether the trace has a ``conversation_id`` column (from its first chunk)."""
    for chunk in chunks:
        return "conversation_id" in chunk.columns
    return False


def _rows_of(chunks: Callable[[], Iterable[pd.DataFrame]], keep: Callable[[int, int], np.ndarray]):
    """``chunks`` with only the rows (in file order) where ``keep(first row, rows)`` is True."""

    def filtered() -> Iterator[pd.DataFrame]:
        row = 0
        for chunk in chunks():
            mask = keep(row, len(chunk))
            row += len(chunk)
            yield chunk[mask].reset_index(drop=True)

    return filtered
