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

from dataclasses import dataclass

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


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start, start + length)`` for every pair."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(total, dtype=np.int64)


@dataclass
class ExternalRows:
    """Rows written before the current chunk that chunk rows follow: tokens and block ids of each."""

    tokens: np.ndarray
    counts: np.ndarray
    flat: np.ndarray

    @classmethod
    def empty(cls) -> ExternalRows:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z)

    def offsets(self) -> np.ndarray:
        return np.cumsum(self.counts) - self.counts


class PrefixBlocks:
    """Block ids of every row of a trace (or a chunk of one) under the prefix rule of the module docstring.

    For a chunk of a longer file, ``first_id`` is the next unused id and
    ``external[i]`` (>= 0) names the row of ``external_rows`` (written
    earlier) that row ``i`` follows when its predecessor is not in the chunk.
    """

    def __init__(
        self,
        input_tokens: np.ndarray,
        predecessor: np.ndarray,
        block_tokens: int,
        first_id: int = 0,
        external: np.ndarray | None = None,
        external_rows: ExternalRows | None = None,
    ):
        if block_tokens <= 0:
            raise ValueError(f"block_tokens={block_tokens}: must be a positive number of tokens")
        tokens = np.asarray(input_tokens, dtype=np.int64)
        n = len(tokens)
        self.tokens = tokens
        self.blocks = block_counts(tokens, block_tokens)
        self.predecessor = np.asarray(predecessor, dtype=np.int64)
        self.external = np.full(n, -1, dtype=np.int64) if external is None else np.asarray(external, np.int64)
        self.external_rows = external_rows or ExternalRows.empty()
        has_pred = self.predecessor >= 0
        has_ext = ~has_pred & (self.external >= 0)
        pred_tokens = np.zeros(n, dtype=np.int64)
        pred_tokens[has_pred] = tokens[self.predecessor[has_pred]]
        pred_tokens[has_ext] = self.external_rows.tokens[self.external[has_ext]]
        self.shared = np.where(has_pred | has_ext, np.minimum(pred_tokens // block_tokens, self.blocks), 0)
        new = self.blocks - self.shared
        # First id of each row's new blocks.
        self.first_new_id = int(first_id) + np.cumsum(new) - new
        self.next_id = int(first_id) + int(new.sum())

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(block count per row, flat ids in row order) for rows ``start:stop``."""
        return self.take(np.arange(start, stop, dtype=np.int64))

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(block count per row, flat ids in row order) for the given rows."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = self.blocks[rows]
        out = np.zeros(int(counts.sum()), dtype=np.int64)
        dest = np.cumsum(counts) - counts  # where each row's ids start in ``out``
        local = np.arange(len(rows), dtype=np.int64)
        owner, hi = rows.copy(), counts.copy()
        while local.size:
            lo = np.minimum(self.shared[owner], hi)  # positions [lo, hi) were introduced by `owner`
            emit = hi > lo
            first = self.first_new_id[owner[emit]] + lo[emit] - self.shared[owner[emit]]
            out[_ranges(dest[local[emit]] + lo[emit], hi[emit] - lo[emit])] = _ranges(
                first, hi[emit] - lo[emit]
            )
            more = lo > 0  # lower positions come from further up the chain
            local, owner, hi = local[more], owner[more], lo[more]
            inside = self.predecessor[owner] >= 0
            if not inside.all():
                # Positions [0, hi) of a row whose predecessor was written before this chunk.
                ext = self.external[owner[~inside]]
                starts = self.external_rows.offsets()[ext]
                out[_ranges(dest[local[~inside]], hi[~inside])] = self.external_rows.flat[
                    _ranges(starts, hi[~inside])
                ]
                local, owner, hi = local[inside], owner[inside], hi[inside]
            owner = self.predecessor[owner]
        return counts, out


class ChainCarry:
    """Chains across the chunks of one file: the last written row of every conversation whose next turn
    is still to come, with the values the block formats need of a predecessor (named int columns and
    its block ids)."""

    def __init__(self):
        self.keys = pd.Index([], dtype=object)
        self.values: dict[str, np.ndarray] = {}
        self.ids = ExternalRows.empty()

    def links(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predecessor row in ``df`` or -1, carried row it follows or -1, 1-based position) per row."""
        pred, position = conversation_chains(df)
        external = np.full(len(df), -1, dtype=np.int64)
        if len(self.keys) == 0 or "conversation_id" not in df.columns:
            return pred, external, position
        heads = np.flatnonzero(pred < 0)
        found = self.keys.get_indexer(df["conversation_id"].iloc[heads].astype(object))
        external[heads] = found
        if (found >= 0).any():
            # Positions continue the carried chain: shift every row of those conversations.
            codes, _ = pd.factorize(df["conversation_id"], use_na_sentinel=True)
            shift = np.zeros(int(codes.max()) + 2, dtype=np.int64)
            linked = heads[found >= 0]
            shift[codes[linked]] = self.values["position"][found[found >= 0]]
            position = position + np.where(codes >= 0, shift[codes], 0)
        return pred, external, position

    def update(
        self,
        df: pd.DataFrame,
        predecessor: np.ndarray,
        external: np.ndarray,
        continues: np.ndarray,
        values: dict[str, np.ndarray],
        blocks: PrefixBlocks,
    ) -> None:
        """After writing ``df``: drop the carried rows it followed, keep its rows whose next turn is to come."""
        if "conversation_id" not in df.columns:
            return
        followed = np.zeros(len(df), dtype=bool)
        followed[predecessor[predecessor >= 0]] = True
        new = np.flatnonzero(np.asarray(continues, dtype=bool) & ~followed)
        keep = np.ones(len(self.keys), dtype=bool)
        keep[external[external >= 0]] = False
        counts, flat = blocks.take(new)
        old_offsets = self.ids.offsets()
        kept = np.flatnonzero(keep)
        old_flat = self.ids.flat[_ranges(old_offsets[kept], self.ids.counts[kept])]
        self.keys = self.keys[kept].append(pd.Index(df["conversation_id"].iloc[new].astype(object)))
        self.values = {
            name: np.r_[self.values.get(name, np.zeros(0, np.int64))[kept], np.asarray(v, np.int64)[new]]
            for name, v in values.items()
        }
        self.ids = ExternalRows(
            np.r_[self.ids.tokens[kept], blocks.tokens[new]],
            np.r_[self.ids.counts[kept], counts],
            np.r_[old_flat, flat],
        )
