"""Prefix-block ``hash_ids`` for the mooncake and bailian exports, built with numpy offsets.

A request's prompt is cut into blocks of ``block_tokens`` tokens; it has
``ceil(input_tokens / block_tokens)`` block ids (0 for an empty prompt).
Rule: a follow-up turn (a row whose conversation has an earlier turn) begins
with the complete blocks of its predecessor's prompt -- the first
``min(predecessor_input // block_tokens, blocks(self))`` ids of the
predecessor -- and the rest of its blocks are new. Only complete blocks are
shared because the predecessor's last, partial block holds more tokens in the
follow-up and so hashes differently; this is what real Mooncake traces show
and what prefix-aware servers can reuse (and what
:mod:`servegen_ml.trace.conversations` looks for when reading them back). Every new block gets the next unused id, counted
in row order from 0, so ids are unique across the file outside shared
prefixes and the same trace always gives the same ids.

Since the predecessor's own prefix came from its predecessor, block ``j`` of a
row belongs to the latest row of its chain that introduced position ``j``.
:class:`PrefixBlocks` walks the chain once per row (not per block), emitting
one contiguous id range per owner, so the cost is rows x chain depth plus the
output size.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def conversation_chains(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(row index of each row's previous turn or -1, 1-based position in its conversation).

    For a trace sorted by arrival. Rows of one ``conversation_id`` are chained
    in ``turn`` order (ties, and a missing ``turn`` column, fall back to row
    order). Rows with a missing or empty id are single requests (position 1).
    """
    n = len(df)
    pred = np.full(n, -1, dtype=np.int64)
    position = np.ones(n, dtype=np.int64)
    if "conversation_id" not in df.columns or n == 0:
        return pred, position
    ids = df["conversation_id"]
    codes, _ = pd.factorize(ids, use_na_sentinel=True)
    codes[(ids == "").fillna(False).to_numpy(dtype=bool)] = -1
    turn = df["turn"].to_numpy(dtype=np.int64) if "turn" in df.columns else np.zeros(n, dtype=np.int64)
    order = np.lexsort((np.arange(n), turn, codes))  # by conversation, then turn, then arrival
    sorted_codes = codes[order]
    same = (sorted_codes[1:] == sorted_codes[:-1]) & (sorted_codes[1:] >= 0)
    pred[order[1:][same]] = order[:-1][same]
    # Position = distance from the last chain start at or before each sorted row.
    starts = np.concatenate([[True], ~same])
    last_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    position[order] = np.arange(n) - last_start + 1
    return pred, position


def block_counts(input_tokens: np.ndarray, block_tokens: int) -> np.ndarray:
    """``ceil(input_tokens / block_tokens)`` per row, int64."""
    tokens = np.asarray(input_tokens, dtype=np.int64)
    return -(-tokens // int(block_tokens))


class PrefixBlocks:
    """Block ids of every row of a trace under the prefix rule of the module docstring."""

    def __init__(self, input_tokens: np.ndarray, predecessor: np.ndarray, block_tokens: int):
        if block_tokens <= 0:
            raise ValueError(f"block_tokens={block_tokens}: must be a positive number of tokens")
        tokens = np.asarray(input_tokens, dtype=np.int64)
        self.blocks = block_counts(tokens, block_tokens)
        self.predecessor = np.asarray(predecessor, dtype=np.int64)
        has_pred = self.predecessor >= 0
        pred_complete = (
            tokens[np.where(has_pred, self.predecessor, 0)] // block_tokens if len(tokens) else tokens
        )
        self.shared = np.where(has_pred, np.minimum(pred_complete, self.blocks), 0)
        new = self.blocks - self.shared
        # First id of each row's new blocks.
        self.first_new_id = np.concatenate([[0], np.cumsum(new)[:-1]]).astype(np.int64) if len(new) else new

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(block count per row, flat ids in row order) for rows ``start:stop``."""
        rows = np.arange(start, stop, dtype=np.int64)
        counts = self.blocks[start:stop]
        seg_row, seg_owner, seg_lo, seg_hi = [], [], [], []
        local = np.arange(len(rows), dtype=np.int64)
        owner, hi = rows.copy(), counts.copy()
        while local.size:
            lo = np.minimum(self.shared[owner], hi)  # positions [lo, hi) were introduced by `owner`
            emit = hi > lo
            seg_row.append(local[emit])
            seg_owner.append(owner[emit])
            seg_lo.append(lo[emit])
            seg_hi.append(hi[emit])
            more = lo > 0  # lower positions come from further up the chain
            local, owner, hi = local[more], self.predecessor[owner[more]], lo[more]
        return counts, self._expand(seg_row, seg_owner, seg_lo, seg_hi)

    def _expand(self, seg_row, seg_owner, seg_lo, seg_hi) -> np.ndarray:
        if not seg_row:
            return np.zeros(0, dtype=np.int64)
        row, owner, lo, hi = (np.concatenate(x) for x in (seg_row, seg_owner, seg_lo, seg_hi))
        order = np.lexsort((lo, row))
        owner, lo, length = owner[order], lo[order], (hi - lo)[order]
        first_id = self.first_new_id[owner] + lo - self.shared[owner]
        seg_start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
        total = int(length.sum())
        return np.repeat(first_id - seg_start, length) + np.arange(total, dtype=np.int64)
