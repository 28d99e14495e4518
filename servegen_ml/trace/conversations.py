"""Infer conversations from prefix-block hashes (Mooncake ``hash_ids``), docs/traces.md and docs/conversations.md.

Rule. Request *r* is a follow-up of an earlier request *j* when *r*'s
``hash_ids`` begin with all of *j*'s **complete** blocks, and *j* has at least
``min_prefix_blocks`` (2) complete blocks. A block is complete when the
request's input fills it: *j* has ``input_tokens // block_size`` complete
blocks (512 tokens in Mooncake); without token counts, all but the last block.
Why complete blocks only: the last block of a prompt is almost always partial
(99.8% of Mooncake inputs are not a multiple of 512), and the next turn's
block at that position holds more tokens, so it hashes differently. Requiring
the whole list would find 130 follow-ups in the Mooncake FAST'25 trace
instead of the 3,975 found here. Why two blocks: block 0 is shared by every
Mooncake request (a common system prompt), so one block says nothing.

When several earlier requests qualify, the predecessor is the one with the
longest matching prefix (the most specific context); among requests with the
same prefix, the latest. The follow-up joins its predecessor's conversation
with ``turn = predecessor's turn + 1``; any other request opens a new
conversation (``turn = 1``) whose id is its ordinal (0-based position among the
requests seen, in order). Every request therefore gets a ``conversation_id``.

Cost: O(total blocks). Each prefix of each request gets a 64-bit hash from one
cumulative sum (a prefix-sum hash, so all prefix hashes come at once); keys are
matched by sorting, and :class:`~servegen_ml.trace.keymap.KeyMap` carries the
keys of earlier chunks, so a trace can be processed chunk by chunk. Two
different prefixes collide with probability about 2^-64 per pair.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from servegen_ml.trace.keymap import KeyMap, splitmix64
from servegen_ml.trace.schema import list_lengths, list_values


def prefix_hashes(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Hash of every prefix of every row's block list, flat in row order.

    Element ``offsets[r] + k - 1`` is the hash of row r's first k blocks.
    """
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    pos_in_row = np.arange(len(values), dtype=np.int64) - np.repeat(starts, counts)
    # Mixing (value, position) then summing makes the prefix hash order-sensitive.
    mixed = splitmix64(
        np.asarray(values, dtype=np.int64).view(np.uint64) ^ splitmix64(pos_in_row.view(np.uint64))
    )
    cumulative = np.cumsum(mixed, dtype=np.uint64)
    before_row = np.repeat(np.concatenate([[np.uint64(0)], cumulative])[starts], counts)
    return splitmix64((cumulative - before_row) + (pos_in_row + 1).view(np.uint64))


def _latest_earlier_key(query_hash, query_row, key_hash, key_row) -> np.ndarray:
    """For each query, the row of the latest key with the same hash and a smaller row; -1 if none."""
    all_hash = np.concatenate([query_hash, key_hash])
    all_row = np.concatenate([query_row, key_row])
    is_key = np.concatenate([np.zeros(len(query_hash), bool), np.ones(len(key_hash), bool)])
    # Sorted by (hash, row, query-before-key): a request never matches its own key.
    order = np.lexsort((is_key, all_row, all_hash))
    sorted_is_key = is_key[order]
    last_key_pos = np.maximum.accumulate(np.where(sorted_is_key, np.arange(len(order)), -1))
    query_pos = np.flatnonzero(~sorted_is_key)
    key_pos = last_key_pos[query_pos]
    same = (key_pos >= 0) & (all_hash[order[np.maximum(key_pos, 0)]] == all_hash[order[query_pos]])
    match = np.full(len(query_hash), -1, dtype=np.int64)
    match[order[query_pos][same]] = all_row[order[key_pos[same]]]
    return match


def _follow_chains(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(root, depth) of each row given its parent row (-1 for none); parents precede children."""
    n = len(parent)
    ancestor = np.where(parent >= 0, parent, np.arange(n))
    depth = (parent >= 0).astype(np.int64)
    # Pointer jumping: O(n log(max depth)).
    while True:
        nxt = ancestor[ancestor]
        if np.array_equal(nxt, ancestor):
            return ancestor, depth
        depth = depth + depth[ancestor]
        ancestor = nxt


class PrefixConversationInferrer:
    """Applies the module's rule to a stream of chunks (in arrival order), carrying keys across chunks."""

    def __init__(self, block_size: int = 512, min_prefix_blocks: int = 2):
        self.block_size = block_size
        self.min_prefix_blocks = min_prefix_blocks
        self._keys = KeyMap(width=2)  # prefix hash -> (conversation root ordinal, turn)
        self._seen = 0

    def assign(
        self, hash_ids: pd.Series, input_tokens: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(conversation root ordinal, turn) for each row of the chunk."""
        counts, values = list_lengths(hash_ids), list_values(hash_ids)
        n = len(counts)
        if input_tokens is None:
            complete = np.maximum(counts - 1, 0)
        else:
            complete = np.minimum(np.asarray(input_tokens, dtype=np.int64) // self.block_size, counts)
        hashes = prefix_hashes(counts, values)
        starts = np.cumsum(counts) - counts
        row_of_block = np.repeat(np.arange(n), counts)
        blocks_so_far = np.arange(len(values)) - starts[row_of_block] + 1

        is_key_row = complete >= self.min_prefix_blocks
        key_rows = np.flatnonzero(is_key_row)
        key_hash = hashes[starts[key_rows] + complete[key_rows] - 1]
        query = np.flatnonzero(blocks_so_far >= self.min_prefix_blocks)
        query_hash, query_row = hashes[query], row_of_block[query]

        local = _latest_earlier_key(query_hash, query_row, key_hash, key_rows)
        found_old, old_values = self._keys.lookup(query_hash)
        matched = (local >= 0) | found_old
        # Queries are in (row, prefix length) order: the last matched one per row is its longest prefix.
        m = np.flatnonzero(matched)
        last_of_row = np.ones(len(m), dtype=bool)
        last_of_row[:-1] = query_row[m[1:]] != query_row[m[:-1]]
        best = m[last_of_row]

        parent_local = np.full(n, -1, dtype=np.int64)
        from_state = np.zeros(n, dtype=bool)
        base_root = self._seen + np.arange(n, dtype=np.int64)
        base_turn = np.ones(n, dtype=np.int64)
        rows = query_row[best]
        is_local = local[best] >= 0
        parent_local[rows[is_local]] = local[best][is_local]
        old = rows[~is_local]
        from_state[old] = True
        base_root[old] = old_values[best[~is_local], 0]
        base_turn[old] = old_values[best[~is_local], 1] + 1

        root, depth = _follow_chains(parent_local)
        conversation_root = base_root[root]
        turn = base_turn[root] + depth
        self._keys.update(key_hash, np.column_stack([conversation_root[key_rows], turn[key_rows]]))
        self._seen += n
        return conversation_root, turn


def infer_conversations(
    hash_ids: pd.Series,
    input_tokens: np.ndarray | None = None,
    block_size: int = 512,
    min_prefix_blocks: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """(conversation root ordinal, turn) for a whole trace in arrival order; see the module docstring."""
    return PrefixConversationInferrer(block_size, min_prefix_blocks).assign(hash_ids, input_tokens)
