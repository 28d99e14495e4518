import numpy as np
import pandas as pd

from servegen_ml.export.hash_ids import PrefixBlocks, block_counts, conversation_chains
from servegen_ml.trace.schema import make_trace


def reference_blocks(input_tokens, predecessor, block_tokens):
    """Row-by-row implementation of the documented rule (rows are given predecessors-first)."""
    blocks, next_id = [], 0
    for i, tokens in enumerate(input_tokens):
        n = -(-int(tokens) // block_tokens)
        p = predecessor[i]
        prefix = blocks[p][: min(int(input_tokens[p]) // block_tokens, n)] if p >= 0 else []
        fresh = list(range(next_id, next_id + n - len(prefix)))
        next_id += len(fresh)
        blocks.append(prefix + fresh)
    return blocks


def random_chains(rng, n):
    """Predecessors that point backwards; follow-ups sometimes shorter than their predecessor."""
    predecessor = np.full(n, -1)
    for i in range(1, n):
        if rng.random() < 0.6:
            predecessor[i] = rng.integers(0, i)
    tokens = rng.integers(0, 3000, size=n)
    return tokens, predecessor


def test_matches_row_by_row_reference_on_random_chains():
    rng = np.random.default_rng(0)
    tokens, predecessor = random_chains(rng, 400)
    expected = reference_blocks(tokens, predecessor, 128)
    blocks = PrefixBlocks(tokens, predecessor, 128)
    for start, stop in [(0, 400), (0, 1), (37, 211), (399, 400)]:
        counts, flat = blocks.rows(start, stop)
        assert counts.tolist() == [len(b) for b in expected[start:stop]]
        assert flat.tolist() == [x for b in expected[start:stop] for x in b]


def test_block_counts_is_ceiling():
    assert block_counts(np.array([0, 1, 511, 512, 513, 1024]), 512).tolist() == [0, 1, 1, 1, 2, 2]


def test_conversation_chains_follow_turn_order_and_skip_missing_ids():
    df = make_trace(
        {
            "timestamp": np.arange(6.0),
            "client_id": ["a"] * 6,
            "input_tokens": np.ones(6),
            "output_tokens": np.ones(6),
            "conversation_id": ["x", "", "y", "x", "x", "y"],
            "turn": [1, 1, 1, 3, 2, 2],
        }
    )
    df["conversation_id"] = df["conversation_id"].where(np.arange(6) != 1, pd.NA)
    predecessor, position = conversation_chains(df)
    # x: rows 0 (turn 1) -> 4 (turn 2) -> 3 (turn 3); y: 2 -> 5; row 1 has no conversation.
    assert predecessor.tolist() == [-1, -1, -1, 4, 0, 2]
    assert position.tolist() == [1, 1, 1, 3, 2, 2]
