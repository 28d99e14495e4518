"""One-screen summary of a trace, computable chunk by chunk (the ``validate`` command prints it).

Fields: rows, clients, time span and mean rate, columns present, mean token
counts, and for traces with conversations: conversations, share of
follow-up requests (``turn`` > 1) and mean turns per conversation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from servegen_ml.trace.keymap import hash_strings
from servegen_ml.trace.schema import COLUMN_ORDER
from servegen_ml.trace.spill import HashSpill, distinct_keys


class TraceSummary:
    """Accumulates :func:`summarize` over chunks with memory bounded by the clients and the chunk size
    (conversation ids are counted from hashes spilled to disk, :mod:`servegen_ml.trace.spill`)."""

    def __init__(self):
        self.rows = 0
        self._clients: set[str] = set()
        self._fields: set[str] = set()
        self._t_min, self._t_max = np.inf, -np.inf
        self._token_sums = {"input_tokens": 0, "output_tokens": 0}
        self._conversations = HashSpill()
        self._conversation_rows = 0
        self._follow_ups = 0

    def add(self, chunk: pd.DataFrame) -> TraceSummary:
        if len(chunk) == 0:
            self._fields.update(chunk.columns)
            return self
        self.rows += len(chunk)
        self._fields.update(chunk.columns)
        self._clients.update(chunk["client_id"].unique().tolist())
        t = chunk["timestamp"].to_numpy()
        self._t_min, self._t_max = min(self._t_min, t.min()), max(self._t_max, t.max())
        for col in self._token_sums:
            self._token_sums[col] += int(chunk[col].sum())
        if "conversation_id" in chunk:
            keys = np.unique(hash_strings(chunk["conversation_id"]))
            self._conversations.add(keys, np.zeros(len(keys), dtype=np.int64))
            self._conversation_rows += len(chunk)
        if "turn" in chunk:
            self._follow_ups += int((chunk["turn"].to_numpy() > 1).sum())
        return self

    def result(self) -> dict:
        span_s = float(self._t_max - self._t_min) if self.rows else 0.0
        out = {
            "rows": self.rows,
            "clients": len(self._clients),
            "span_s": span_s,
            "mean_rate_per_s": self.rows / span_s if span_s > 0 else float("nan"),
            "fields": [c for c in COLUMN_ORDER if c in self._fields],
            **{
                f"mean_{c}": (s / self.rows if self.rows else float("nan"))
                for c, s in self._token_sums.items()
            },
        }
        if "conversation_id" in self._fields:
            n_conv = distinct_keys(self._conversations)
            out["conversations"] = n_conv
            out["mean_turns_per_conversation"] = self._conversation_rows / n_conv if n_conv else float("nan")
        if "turn" in self._fields:
            out["follow_up_share"] = self._follow_ups / self.rows if self.rows else float("nan")
        return out


def summarize(df: pd.DataFrame) -> dict:
    """rows, clients, span_s, mean_rate_per_s, fields, mean tokens, and conversation figures when present."""
    return TraceSummary().add(df).result()


def headline(summary: dict) -> str:
    """'12,031 requests from 1 client(s) over 3,537 s'."""
    return (
        f"{summary['rows']:,} requests from {summary['clients']:,} client(s) over {summary['span_s']:,.0f} s"
    )


def format_summary(summary: dict) -> str:
    """A headline, then ``key: value`` lines, numbers rounded for reading."""
    lines = [headline(summary)]
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:,.3f}" if abs(value) < 1e6 else f"{value:,.0f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        elif isinstance(value, list):
            value = ", ".join(value)
        lines.append(f"{key}: {value}")
    return "\n".join(lines)
