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

    A conversation stays open until it has been idle for ``idle_s``; memory is
    bounded by the conversations active within that time (sorted numpy arrays
    keyed by 64-bit hashes of the ids, about 24 bytes each). A conversation that
    resumes after a longer silence is counted as a new one (the only departure
    from :func:`conversation_stats`, besides a negligible chance of two ids
    sharing a hash). Exact: turns per conversation, follow-up share, gap count
    and mean. Approximate: gap quantiles (log10 bins of 1/100 decade).
    """

    def __init__(self, idle_s: float = 21600.0):
        self.idle_s = float(idle_s)
        self.keys = np.zeros(0, np.uint64)  # sorted hashes of the open conversations
        self.open_turns = np.zeros(0, np.int64)
        self.open_last_t = np.zeros(0)
        self.turns = IntHistogram(exact_max=1024)
        self.gaps = LogValueHistogram(lo=-3.0, hi=7.0)
        self.gap_sum_s = 0.0
        self.requests = 0
        self.follow_ups = 0

    def add(self, t_s: np.ndarray, conversation_id: pd.Series) -> None:
        ids = pd.Series(conversation_id).reset_index(drop=True)
        missing = ids.isna().to_numpy()
        self.requests += len(ids)
        self.turns.add(np.ones(int(missing.sum()), np.int64))
        h = hash_strings(ids[~missing])
        t = np.asarray(t_s, np.float64)[~missing]
        if len(t):
            order = np.lexsort((t, h))
            self._add_sorted(h[order], t[order])
        if len(t_s):
            self._close(self.open_last_t < float(np.max(t_s)) - self.idle_s)

    def _add_sorted(self, h: np.ndarray, t: np.ndarray) -> None:
        """Rows ordered by (id hash, time): gaps, follow-ups, and conversation segments."""
        first = np.r_[True, h[1:] != h[:-1]]
        found, pos = self._find(h[first])
        prev = np.r_[np.nan, t[:-1]]
        carried = np.full(len(pos), np.nan)
        carried[found] = self.open_last_t[pos[found]]
        prev[first] = carried
        # a silence longer than idle_s starts a new conversation, inside a chunk as across chunks
        split = t - prev > self.idle_s
        prev[split] = np.nan
        has = ~np.isnan(prev)
        gaps = (t - prev)[has]
        self.gaps.add(gaps)
        self.gap_sum_s += float(gaps.sum())
        self.follow_ups += int(has.sum())
        starts = np.flatnonzero(first | split)
        seg_turns = np.diff(np.r_[starts, len(h)])
        seg_last_t = t[np.r_[starts[1:], len(h)] - 1]
        # open conversations seen again either continue into their first segment or were idle too long
        cont = found & has[first]
        seg_of_first = np.searchsorted(starts, np.flatnonzero(first))
        seg_turns[seg_of_first[cont]] += self.open_turns[pos[cont]]
        self.turns.add(self.open_turns[pos[found & ~cont]])
        keep = np.ones(len(self.keys), bool)
        keep[pos[found]] = False
        self.keys, self.open_turns, self.open_last_t = (
            self.keys[keep],
            self.open_turns[keep],
            self.open_last_t[keep],
        )
        last_seg = np.r_[h[starts[1:]] != h[starts[:-1]], True]
        self.turns.add(seg_turns[~last_seg])
        self._insert(h[starts[last_seg]], seg_turns[last_seg], seg_last_t[last_seg])

    def _find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        found = (self.keys[pos] == keys) if len(self.keys) else np.zeros(len(keys), bool)
        return found, pos

    def _insert(self, keys: np.ndarray, turns: np.ndarray, last_t: np.ndarray) -> None:
        """Add conversations whose keys are not open (keys unique and sorted)."""
        all_keys = np.concatenate([self.keys, keys])
        order = np.argsort(all_keys, kind="stable")
        self.keys = all_keys[order]
        self.open_turns = np.concatenate([self.open_turns, turns])[order]
        self.open_last_t = np.concatenate([self.open_last_t, last_t])[order]

    def _close(self, mask: np.ndarray) -> None:
        self.turns.add(self.open_turns[mask])
        keep = ~mask
        self.keys, self.open_turns, self.open_last_t = (
            self.keys[keep],
            self.open_turns[keep],
            self.open_last_t[keep],
        )

    def result(self) -> dict:
        self._close(np.ones(len(self.keys), bool))
        n_gaps = self.follow_ups
        q = self.gaps.quantile([0.5, 0.9, 0.99]) if n_gaps else [math.nan] * 3
        return {
            "requests": self.requests,
            "conversations": self.turns.n,
            "follow_up_share": self.follow_ups / max(self.requests, 1),
            "turns_per_conversation": self.turns.summary((0.5, 0.9, 0.99)),
            "inter_turn_gap_s": {
                "count": n_gaps,
                "mean": self.gap_sum_s / n_gaps if n_gaps else math.nan,
                "p50": float(q[0]),
                "p90": float(q[1]),
                "p99": float(q[2]),
            },
            "series": {"turns": self.turns, "gaps": self.gaps},
        }
