"""The parametric per-client generator: ServeGen's method, fitted from raw traces (docs/baselines.md).

Per client and rate window (600 s by default) the rate, the gap CV and the
better of a Gamma or Weibull fit by likelihood; per client and data window
(6 h by default) the empirical distribution of every field. The fitted state
is a :class:`servegen_ml.pool.ClientPool` (Parquet + JSON), so a published
ServeGen pool loads directly as a ready-made fit (:meth:`from_pool`).

Unlike the public ServeGen generator, each field is drawn with its own
uniform (input and output are not forced to be rank-correlated) and window
counts keep their natural spread (arrivals are never rescaled to hit
rate x window). Sparse windows fall back to the client's whole-trace fit
(:mod:`servegen_ml.pool.fit`); likelihood smoothing is documented in
:mod:`servegen_ml.pool.likelihood` and :mod:`servegen_ml.pool.empirical`.

Conversations: when the training trace has ``conversation_id`` with
follow-ups, the pool is fitted on conversation openers only and a per-client
:class:`~servegen_ml.conversations.empirical.ConversationModel` describes the
follow-ups (turns, inter-turn gaps given the previous output, input growth);
sampling and ``spec.upsample`` follow :mod:`servegen_ml.conversations.sampling`,
the likelihood :mod:`servegen_ml.conversations.likelihood`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from servegen_ml.conversations.empirical import ConversationModel
from servegen_ml.conversations.fit import ConversationFitter, openers_of
from servegen_ml.conversations.last_turns import LastTurns
from servegen_ml.conversations.likelihood import log_prob_with_conversations
from servegen_ml.core.errors import UserError
from servegen_ml.core.memory import release_freed_memory
from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.base import Generator
from servegen_ml.generators.stream import UnitSource, pool_unit_source
from servegen_ml.pool import ClientPool, load_servegen_pool
from servegen_ml.pool.fit import PoolFitter
from servegen_ml.pool.likelihood import pool_log_prob


class ParametricGenerator(Generator):
    kind = "parametric"
    stream_unit_s = 600.0  # the default rate window: a unit holds 10 minutes of arrivals

    def __init__(self, rate_window_s: float = 600.0, data_window_s: float = 21_600.0, min_events: int = 20):
        if not (rate_window_s > 0 and data_window_s > 0):
            raise UserError("rate_window_s and data_window_s must be positive seconds")
        if int(min_events) < 2:
            raise UserError("min_events must be at least 2 (a fit needs gaps)")
        self.rate_window_s = float(rate_window_s)
        self.data_window_s = float(data_window_s)
        self.min_events = int(min_events)
        self.pool_: ClientPool | None = None
        self.conversations_: ConversationModel | None = None

    @classmethod
    def from_pool(cls, directory: str | os.PathLike) -> ParametricGenerator:
        """A ready-made fit from a published ServeGen client-pool directory."""
        pool = load_servegen_pool(directory)
        gen = cls(rate_window_s=pool.rate_window_s, data_window_s=pool.data_window_s)
        gen.pool_ = pool
        return gen

    def fit(self, trace: pd.DataFrame) -> ParametricGenerator:
        return self.fit_chunks([trace])

    def fit_chunks(
        self, chunks: Iterable[pd.DataFrame], last_turns: LastTurns | None = None
    ) -> ParametricGenerator:
        """Fit on a time-sorted trace streamed in chunks (bounded memory); the same model as :meth:`fit`.

        ``last_turns`` (:func:`~servegen_ml.conversations.last_turns.mark_last_turns` of the same chunks)
        lets the conversation fit close each conversation at its last turn: less memory, the same model.
        """
        fitter = PoolFitter(self.rate_window_s, self.data_window_s, self.min_events)
        conversations = ConversationFitter(last_turns=last_turns)
        for chunk in openers_of(chunks, conversations):
            fitter.add(chunk)
        pool = fitter.finish()
        del fitter
        release_freed_memory()
        if conversations.follow_ups == 0:
            self.pool_, self.conversations_ = pool, conversations.finish()
            return self
        # The two finishes are the fit's largest steps: the pool waits on disk while the conversations finish.
        with tempfile.TemporaryDirectory(prefix="servegen-pool-") as spool:
            pool.write_into(Path(spool))
            del pool
            release_freed_memory()
            self.conversations_ = conversations.finish()
            del conversations
            release_freed_memory()
            self.pool_ = ClientPool.load(spool)
        return self

    def unit_source(self, spec: GenerationSpec, rng: np.random.Generator) -> UnitSource:
        self._require_fitted()
        return pool_unit_source(self.pool_, self.conversations_, spec, rng)

    def log_prob(self, trace: pd.DataFrame, window_end_s: float | None = None) -> pd.DataFrame:
        self._require_fitted()
        if self.conversations_ is not None:
            score = partial(pool_log_prob, self.pool_)
            return log_prob_with_conversations(self.conversations_, trace, window_end_s, score)
        return pool_log_prob(self.pool_, trace, window_end_s)

    @property
    def clients(self) -> tuple[str, ...]:
        self._require_fitted()
        return self.pool_.clients

    def config(self) -> dict[str, Any]:
        return {
            "rate_window_s": self.rate_window_s,
            "data_window_s": self.data_window_s,
            "min_events": self.min_events,
        }

    def _save_state(self, directory: Path) -> None:
        self.pool_.write_into(directory)
        if self.conversations_ is not None:
            self.conversations_.write_into(directory)

    def _load_state(self, directory: Path) -> None:
        self.pool_ = ClientPool.load(directory)
        self.conversations_ = (
            ConversationModel.load(directory) if ConversationModel.saved_in(directory) else None
        )
        # Reading, checking and compiling the tables leave freed memory resident otherwise.
        release_freed_memory()

    @property
    def is_fitted(self) -> bool:
        return self.pool_ is not None
