"""The naive generator: the ServeGen paper's strawman (docs/baselines.md).

One stream at the aggregate rate of the training trace, constant over time:
Poisson (``arrival="poisson"``) or Gamma gaps with the aggregate gap CV
(``arrival="gamma"``, shape = 1 / CV^2). Every field is drawn independently
from its aggregate empirical distribution (multimodal: item count, then tokens
per item; reasoning from the aggregate ratio distribution). Output requests
carry the client id ``all``.

Likelihood: the aggregate stream is scored as one client (see
:mod:`servegen_ml.pool.likelihood`), and ``log share(client)`` is added to
``time`` so every generator scores the same client-labelled events; shares
are the training counts with add-half smoothing (an unseen client gets the
mass of half a request).

Conversations: when the training trace has ``conversation_id`` with
follow-ups, the stream is fitted on conversation openers only and one
aggregate :class:`~servegen_ml.conversations.empirical.ConversationModel` (all
clients as one) describes the follow-ups, as in the parametric generator.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from servegen_ml.compose import interarrival as ia
from servegen_ml.conversations.empirical import ConversationModel
from servegen_ml.conversations.fit import ConversationFitter, openers_of
from servegen_ml.conversations.last_turns import LastTurns
from servegen_ml.conversations.likelihood import log_prob_with_conversations
from servegen_ml.core.errors import CheckpointError, UserError
from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.base import Generator
from servegen_ml.generators.stream import UnitSource, pool_unit_source
from servegen_ml.pool import ClientPool
from servegen_ml.pool.fit import PoolFitter
from servegen_ml.pool.likelihood import pool_log_prob
from servegen_ml.trace.adapters.base import constant_strings

CLIENT_ID = "all"
ARRIVALS = ("poisson", "gamma")
SHARES_FILE = "client_shares.parquet"


class NaiveGenerator(Generator):
    kind = "naive"
    stream_unit_s = 600.0

    def __init__(self, arrival: str = "poisson", rate_window_s: float = 600.0):
        if arrival not in ARRIVALS:
            raise UserError(f"arrival={arrival!r}: choose one of {ARRIVALS}")
        self.arrival = arrival
        self.rate_window_s = float(rate_window_s)
        self.pool_: ClientPool | None = None
        self.shares_: pd.DataFrame | None = None
        self.conversations_: ConversationModel | None = None

    def fit(self, trace: pd.DataFrame) -> NaiveGenerator:
        return self.fit_chunks([trace])

    def fit_chunks(
        self, chunks: Iterable[pd.DataFrame], last_turns: LastTurns | None = None
    ) -> NaiveGenerator:
        """Fit on a time-sorted trace streamed in chunks (bounded memory); the same model as :meth:`fit`.

        ``last_turns`` (:func:`~servegen_ml.conversations.last_turns.mark_last_turns` of the same chunks)
        lets the conversation fit close each conversation at its last turn: less memory, the same model.
        """
        conversations = ConversationFitter(last_turns=last_turns)
        self._fit_requests(openers_of(chunks, conversations, client_ids=CLIENT_ID))
        self.conversations_ = conversations.finish()
        return self

    def _fit_requests(self, chunks: Iterable[pd.DataFrame]) -> None:
        # One client and one data window: the aggregate distributions (sized once the span is known).
        fitter = PoolFitter(self.rate_window_s, data_window_s=None, fit_rates=False)
        gaps = _GapMoments()
        shares: dict[str, int] = {}
        for chunk in chunks:
            if len(chunk) == 0:
                continue
            for name, count in chunk["client_id"].astype(str).value_counts(sort=False).items():
                shares[name] = shares.get(name, 0) + int(count)
            gaps.add(chunk["timestamp"].to_numpy(np.float64))
            fitter.add(chunk.assign(client_id=constant_strings(CLIENT_ID, len(chunk))))
        if fitter.rows == 0:
            raise UserError("cannot fit a generator to an empty trace")
        observed_s = fitter.t_max - fitter.origin_s
        span_s = (np.floor(observed_s / self.rate_window_s) + 1) * self.rate_window_s
        pool = fitter.finish(min_events=fitter.rows + 1, data_window_s=span_s)
        pool.rates = self._constant_rates(fitter.rows, observed_s, gaps.cv(), span_s)
        pool.population_rate = float(pool.rates["rate"].iloc[0])
        pool.notes = [f"naive ({self.arrival}) fit of {fitter.rows} requests"]
        self.pool_ = pool
        names = sorted(shares)
        self.shares_ = pd.DataFrame(
            {
                "client_id": pd.Index(names, dtype=object),
                "count": np.array([shares[n] for n in names], np.int64),
            }
        )

    def _constant_rates(self, rows: int, observed_s: float, cv: float, span_s: float) -> pd.DataFrame:
        rate = rows / observed_s if observed_s > 0 else rows / self.rate_window_s
        shape = (
            1.0 if self.arrival == "poisson" else float(ia.clip_shape(np.array([ia.GAMMA]), [1.0 / cv**2])[0])
        )
        n = int(round(span_s / self.rate_window_s))
        return pd.DataFrame(
            {
                "client_id": np.full(n, CLIENT_ID, dtype=object),
                "window_start_s": np.arange(n) * self.rate_window_s,
                "rate": np.full(n, rate),
                "cv": np.full(n, 1.0 if self.arrival == "poisson" else cv),
                "family": np.full(n, "Gamma", dtype=object),
                "shape": np.full(n, shape),
                "scale": np.full(n, 1.0 / (rate * shape)),
            }
        )

    def unit_source(self, spec: GenerationSpec, rng: np.random.Generator) -> UnitSource:
        self._require_fitted()
        if spec.clients.kind != "all":
            raise UserError(
                f"clients={spec.clients.to_str()}: the naive generator has no clients; use clients=all"
            )
        return pool_unit_source(self.pool_, self.conversations_, spec, rng)

    def log_prob(self, trace: pd.DataFrame, window_end_s: float | None = None) -> pd.DataFrame:
        self._require_fitted()
        if self.conversations_ is not None:
            labels = np.full(len(trace), CLIENT_ID, dtype=object)
            return log_prob_with_conversations(
                self.conversations_, trace, window_end_s, self._request_log_prob, labels
            )
        return self._request_log_prob(trace, window_end_s)

    def _request_log_prob(self, trace: pd.DataFrame, window_end_s: float | None) -> pd.DataFrame:
        """Requests as events of the aggregate stream, with log share(client) in ``time``."""
        lp = pool_log_prob(
            self.pool_, trace, window_end_s, stream_ids=np.full(len(trace), CLIENT_ID, dtype=object)
        )
        lp["time"] += self._log_share(trace["client_id"].astype(str).to_numpy(dtype=object))
        lp["total"] = lp.drop(columns="total").sum(axis=1)
        return lp

    def _log_share(self, client_ids: np.ndarray) -> np.ndarray:
        counts = pd.Series(
            self.shares_["count"].to_numpy(np.float64), index=self.shares_["client_id"].astype(str)
        )
        total = counts.sum() + 0.5 * (len(counts) + 1)
        seen = counts.reindex(client_ids).to_numpy()
        return np.log(np.where(np.isnan(seen), 0.5, seen + 0.5) / total)

    def config(self) -> dict[str, Any]:
        return {"arrival": self.arrival, "rate_window_s": self.rate_window_s}

    def _save_state(self, directory: Path) -> None:
        self.pool_.write_into(directory)
        table = pa.table(
            {"client_id": self.shares_["client_id"].astype(str).tolist(), "count": self.shares_["count"]}
        )
        pq.write_table(table, directory / SHARES_FILE)
        if self.conversations_ is not None:
            self.conversations_.write_into(directory)

    def _load_state(self, directory: Path) -> None:
        self.pool_ = ClientPool.load(directory)
        path = directory / SHARES_FILE
        if not path.is_file():
            raise CheckpointError(f"{directory}: naive checkpoint lacks {SHARES_FILE}")
        self.shares_ = pq.read_table(path).to_pandas()
        self.conversations_ = (
            ConversationModel.load(directory) if ConversationModel.saved_in(directory) else None
        )

    @property
    def is_fitted(self) -> bool:
        return self.pool_ is not None


class _GapMoments:
    """Count, mean and squared deviations of the gaps of a sorted stream, merged chunk by chunk (Chan et al.)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self._last: float | None = None

    def add(self, t: np.ndarray) -> None:
        gaps = np.diff(t if self._last is None else np.r_[self._last, t])
        self._last = float(t[-1])
        if len(gaps) == 0:
            return
        mean = float(gaps.mean())
        m2 = float(((gaps - mean) ** 2).sum())
        n = self.n + len(gaps)
        delta = mean - self.mean
        self.mean += delta * len(gaps) / n
        self.m2 += m2 + delta * delta * self.n * len(gaps) / n
        self.n = n

    def cv(self) -> float:
        """Gap CV (population standard deviation over mean); 1 when undefined."""
        if self.n > 1 and self.mean > 0:
            return float(np.sqrt(self.m2 / self.n) / self.mean)
        return 1.0
