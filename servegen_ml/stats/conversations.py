"""Conversation statistics: turns per conversation, inter-turn gaps, share of follow-up requests.

A conversation is the set of requests sharing a ``conversation_id``; a row with
a missing id is a conversation of one turn. The inter-turn gap is the time
between consecutive arrivals of one conversation (arrival to arrival: traces
do not record completion times). A follow-up is any request that is not the
first of its conversation.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from servegen_ml.stats.histogram import IntHistogram, LogValueHistogram
from servegen_ml.trace.keymap import hash_strings
from servegen_ml.trace.spill import HashSpill


def _sorted_conversations(t_s: np.ndarray, conversation_id: pd.Series):
    """(codes, times) of rows with an id, ordered by (conversation, time), and the count of rows without one."""
    ids = pd.Series(conversation_id).reset_index(drop=True)
    missing = ids.isna().to_numpy()
    codes, uniques = pd.factorize(ids[~missing], sort=False)
    t = np.asarray(t_s, np.float64)[~missing]
    order = np.lexsort((t, codes))
    return codes[order].astype(np.int64), t[order], pd.Index(uniques), int(missing.sum())


def conversation_stats(trace: pd.DataFrame) -> dict:
    """Turns per conversation (array), inter-turn gaps in s (array) and the follow-up share."""
    codes, t, _, singles = _sorted_conversations(trace["timestamp"].to_numpy(), trace["conversation_id"])
    same = np.r_[False, codes[1:] == codes[:-1]] if len(codes) else np.zeros(0, bool)
    turns = np.concatenate(
        [np.bincount(codes) if len(codes) else np.zeros(0, np.int64), np.ones(singles, np.int64)]
    )
    gaps = (t - np.r_[np.nan, t[:-1]])[same] if len(t) else np.zeros(0)
    n = len(trace)
    return {
        "turns": turns.astype(np.int64),
        "inter_turn_gap_s": gaps,
        "follow_up_share": float(same.sum() / n) if n else math.nan,
    }


class ConversationAccumulator:
    """Streaming conversation statistics over time-sorted chunks.

    Each request's (64-bit hash of its id, arrival time) is spilled to
    hash-partitioned temporary files (:mod:`servegen_ml.trace.spill`) and the
    conversations are assembled partition by partition at :meth:`result`, so
    memory is bounded by the chunk size, not by the conversations open at once
    (tens of millions in a day of 10^8 requests). A silence longer than
    ``idle_s`` starts a new conversation (the only departure from
    :func:`conversation_stats`, besides a negligible chance of two ids sharing
    a hash). Exact: turns per conversation, follow-up share, gap count and
    mean. Approximate: gap quantiles (log10 bins of 1/100 decade).
    """

    def __init__(self, idle_s: float = 21600.0):
        self.idle_s = float(idle_s)
        self._spill = HashSpill(value_dtype=np.float64)
        self._singles = 0
        self.requests = 0

    def add(self, t_s: np.ndarray, conversation_id: pd.Series) -> None:
        ids = pd.Series(conversation_id).reset_index(drop=True)
        missing = ids.isna().to_numpy()
        self.requests += len(ids)
        self._singles += int(missing.sum())
        # Chunks come in time order, so each id's times are spilled (and read back) in order.
        self._spill.add(hash_strings(ids[~missing]), np.asarray(t_s, np.float64)[~missing])

    def _assemble(self):
        turns = IntHistogram(exact_max=1024)
        gaps = LogValueHistogram(lo=-3.0, hi=7.0)
        turns.add(np.ones(self._singles, np.int64))
        gap_sum_s, follow_ups = 0.0, 0
        for keys, t in self._spill.partitions():
            gap = np.diff(t, prepend=np.nan)
            same = np.r_[False, keys[1:] == keys[:-1]]
            follow = same & (gap <= self.idle_s)
            gaps.add(gap[follow])
            gap_sum_s += float(gap[follow].sum())
            follow_ups += int(follow.sum())
            starts = np.flatnonzero(~follow)
            turns.add(np.diff(np.r_[starts, len(keys)]))
        self._spill.close()
        return turns, gaps, gap_sum_s, follow_ups

    def result(self) -> dict:
        turns, gaps, gap_sum_s, n_gaps = self._assemble()
        q = gaps.quantile([0.5, 0.9, 0.99]) if n_gaps else [math.nan] * 3
        return {
            "requests": self.requests,
            "conversations": turns.n,
            "follow_up_share": n_gaps / max(self.requests, 1),
            "turns_per_conversation": turns.summary((0.5, 0.9, 0.99)),
            "inter_turn_gap_s": {
                "count": n_gaps,
                "mean": gap_sum_s / n_gaps if n_gaps else math.nan,
                "p50": float(q[0]),
                "p90": float(q[1]),
                "p99": float(q[2]),
            },
            "series": {"turns": turns, "gaps": gaps},
        }
