"""One pass over a trace's chunks, feeding every streaming accumulator of ``servegen_ml.stats``.

Memory is bounded by the time span (per-second counts, coarsened for very long
spans), the number of clients, the configured sample sizes and the number of
open conversations — never by the number of requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from servegen_ml.core.errors import UserError
from servegen_ml.stats.arrivals import ArrivalAccumulator
from servegen_ml.stats.clients import ClientAccumulator
from servegen_ml.stats.conversations import ConversationAccumulator
from servegen_ml.stats.dependence import spearman
from servegen_ml.stats.lengths import LengthAccumulator
from servegen_ml.stats.multimodal import MultimodalAccumulator, media_columns
from servegen_ml.stats.reasoning import ReasoningAccumulator
from servegen_ml.stats.sampling import Reservoir

# What the numbers in stats.json are: written into it so a reader need not find this file.
EXACTNESS = {
    "exact": [
        "request counts, rates, spans, per-window counts and index of dispersion (1 s resolution; "
        "coarser only when the span exceeds ~97 days)",
        "per-window inter-arrival CV (aggregate and per client), overall CV, zero-gap share",
        "means, min and max of every token field; quantiles below 2048 tokens/items",
        "client requests, shares, top-k shares, rates, CVs and mean lengths",
        "reasoning ratio moments, bimodality coefficient, point masses at 0 and 1",
        "turns per conversation and follow-up share (a conversation idle longer than "
        "conversation_idle_s and then resumed counts as a new one)",
    ],
    "approximate": [
        "token quantiles above 2048: log bins, within 1.1 %",
        "inter-arrival fits (Exponential/Gamma/Weibull) and their goodness of fit: on a uniform sample "
        "of fit_sample gaps",
        "Spearman correlations and scatter plots: on uniform samples of requests",
        "per-client length distributions: 8 log bins per doubling above 16 tokens",
        "inter-turn gap and per-window CV quantiles: log10 bins (1/100 decade)",
    ],
}


@dataclass
class CharacterizeOptions:
    cv_window_s: float = 600.0
    min_gaps: int = 10
    fit_sample: int = 200_000
    row_sample: int = 50_000
    top_clients: int = 5
    conversation_idle_s: float = 21600.0
    media_window_s: float = 60.0


class TraceCharacterizer:
    """Feed validated, time-sorted chunks with :meth:`add`; :meth:`result` gives (stats, series)."""

    def __init__(
        self, rng: np.random.Generator, options: CharacterizeOptions | None = None, source: str = "<memory>"
    ):
        self.options = options or CharacterizeOptions()
        self.source = source
        # one independent stream per sample, so adding a section never changes another's sample
        self._rngs = iter(rng.spawn(8))
        self.columns: list[str] | None = None
        self.rows = 0
        self.t_last = -math.inf

    def _start(self, chunk: pd.DataFrame) -> None:
        o = self.options
        self.columns = list(chunk.columns)
        t0 = float(chunk["timestamp"].iloc[0])
        self.arrivals = ArrivalAccumulator(next(self._rngs), o.cv_window_s, o.min_gaps, o.fit_sample)
        self.lengths = LengthAccumulator(("input_tokens", "output_tokens"))
        self.pairs = Reservoir(o.row_sample, next(self._rngs))
        self.clients = ClientAccumulator(t0, o.cv_window_s, o.min_gaps)
        media = media_columns(self.columns)
        self.multimodal = (
            MultimodalAccumulator(
                media, t0, next(self._rngs), "text_tokens" in self.columns, o.row_sample, o.media_window_s
            )
            if media
            else None
        )
        self.reasoning = (
            ReasoningAccumulator(next(self._rngs), o.row_sample)
            if "reasoning_tokens" in self.columns
            else None
        )
        self.conversations = (
            ConversationAccumulator(o.conversation_idle_s) if "conversation_id" in self.columns else None
        )

    def add(self, chunk: pd.DataFrame) -> None:
        if len(chunk) == 0:
            return
        if self.columns is None:
            self._start(chunk)
        elif set(chunk.columns) != set(self.columns):
            raise UserError(
                f"{self.source}: from row {self.rows + 1:,} the columns are {sorted(chunk.columns)} "
                f"instead of {sorted(self.columns)}"
            )
        t = chunk["timestamp"].to_numpy(np.float64)
        if np.any(t[1:] < t[:-1]):
            order = np.argsort(t, kind="stable")
            chunk, t = chunk.iloc[order].reset_index(drop=True), t[order]
        if t[0] < self.t_last:
            raise UserError(
                f"{self.source}: row {self.rows + 1:,} (timestamp {t[0]}) is earlier than a previous chunk's "
                f"last timestamp {self.t_last}; characterize streams and needs a trace sorted by timestamp "
                "(write a sorted copy with `servegen-ml convert`)"
            )
        inp = chunk["input_tokens"].to_numpy(np.int64)
        out = chunk["output_tokens"].to_numpy(np.int64)
        self.arrivals.add(t)
        self.lengths.add(t, input_tokens=inp, output_tokens=out)
        self.pairs.add(input_tokens=inp, output_tokens=out)
        self.clients.add(t, chunk["client_id"], inp, out)
        if self.multimodal:
            self.multimodal.add(t, chunk)
        if self.reasoning:
            self.reasoning.add(inp, out, chunk["reasoning_tokens"].to_numpy(np.int64))
        if self.conversations:
            self.conversations.add(t, chunk["conversation_id"])
        self.rows += len(chunk)
        self.t_last = float(t[-1])

    def result(self) -> tuple[dict, dict]:
        """(JSON-ready stats, arrays for figures), one entry per section the trace has."""
        if self.columns is None:
            raise UserError(f"{self.source}: the trace has no rows")
        stats, series = {}, {}
        arrivals = self.arrivals.result()
        series["arrivals"] = arrivals.pop("series")
        pairs = self.pairs.sample()
        lengths = self.lengths.result()
        lengths["spearman_input_output_sampled"] = spearman(pairs["input_tokens"], pairs["output_tokens"])
        series["lengths"] = {"hist": self.lengths.overall, "pairs": pairs}
        clients = self.clients.result(self.options.top_clients)
        series["clients"] = clients.pop("series")
        stats["trace"] = {
            "source": self.source,
            "requests": self.rows,
            "columns": self.columns,
            "t_first_s": arrivals["t_first_s"],
            "t_last_s": arrivals["t_last_s"],
            "span_s": arrivals["span_s"],
            "mean_rate_rps": arrivals["mean_rate_rps"],
            "clients": clients["clients"],
        }
        stats["arrivals"] = arrivals
        stats["lengths"] = lengths
        if clients["clients"] >= 2:
            stats["clients"] = clients
        for name, acc in (
            ("multimodal", self.multimodal),
            ("reasoning", self.reasoning),
            ("conversations", self.conversations),
        ):
            if acc is not None:
                res = acc.result()
                series[name] = res.pop("series")
                stats[name] = res
        stats["method"] = {**EXACTNESS, "options": vars(self.options)}
        return stats, series
