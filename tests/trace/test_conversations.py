import json

import numpy as np
import pandas as pd
import pytest

from servegen_ml.trace.conversations import PrefixConversationInferrer, infer_conversations
from servegen_ml.trace.io import read_trace
from servegen_ml.trace.schema import make_list_column

BLOCK = 512


def planted_conversations(seed: int = 0, n_conversations: int = 80):
    """Mooncake-like requests whose conversations are known.

    Every prompt starts with the shared block 0; turn k+1 repeats turn k's
    complete blocks, then fresh ones (its prompt = previous prompt + answer +
    new text). Single short requests (one complete block) are distractors.
    """
    rng = np.random.default_rng(seed)
    next_block = 1
    rows = []  # (time_s, planted conversation, turn, hash_ids, input_tokens)
    for conv in range(n_conversations):
        t = rng.uniform(0, 2000)
        prefix: list[int] = []
        tokens = BLOCK  # the shared system block
        first_len = [1024, 1024 + int(rng.integers(1, 511)), 2048 + int(rng.integers(1, 3000))][conv % 3]
        for turn in range(1, int(rng.integers(1, 7)) + 1):
            tokens = (
                first_len if turn == 1 else tokens + int(rng.integers(50, 800)) + int(rng.integers(100, 3000))
            )
            n_blocks = -(-tokens // BLOCK)
            kept = prefix if turn > 1 else [0]
            ids = kept + list(range(next_block, next_block + n_blocks - len(kept)))
            next_block += n_blocks - len(kept)
            rows.append((t, conv, turn, ids, tokens))
            prefix = ids[: tokens // BLOCK]
            t += rng.uniform(1, 120)
    for k in range(40):  # one complete block: never a predecessor, each its own conversation
        tokens = int(rng.integers(600, 1023))
        rows.append((rng.uniform(0, 2000), n_conversations + k, 1, [0, next_block], tokens))
        next_block += 1
    rows.sort(key=lambda r: r[0])
    return rows


def _hash_column(rows):
    counts = [len(r[3]) for r in rows]
    return make_list_column(np.array(counts), np.concatenate([r[3] for r in rows]))


def assert_same_conversations(planted_conv, planted_turn, inferred_conv, inferred_turn):
    pairs = pd.DataFrame({"p": planted_conv, "i": inferred_conv})
    assert (pairs.groupby("p")["i"].nunique() == 1).all(), "a planted conversation was split"
    assert (pairs.groupby("i")["p"].nunique() == 1).all(), "two planted conversations were merged"
    np.testing.assert_array_equal(planted_turn, inferred_turn)


def test_planted_conversations_are_recovered_exactly():
    rows = planted_conversations()
    root, turn = infer_conversations(_hash_column(rows), np.array([r[4] for r in rows]))
    assert_same_conversations([r[1] for r in rows], np.array([r[2] for r in rows]), root, turn)
    assert (turn > 1).sum() > 100  # the fixture really has follow-ups


def test_chunked_inference_equals_whole():
    rows = planted_conversations(seed=1)
    hashes, tokens = _hash_column(rows), np.array([r[4] for r in rows])
    whole = infer_conversations(hashes, tokens)
    inferrer = PrefixConversationInferrer()
    parts = [
        inferrer.assign(hashes.iloc[i : i + 37].reset_index(drop=True), tokens[i : i + 37])
        for i in range(0, len(rows), 37)
    ]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole[0])
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole[1])


def test_whole_list_match_would_miss_partial_last_blocks():
    # Turn 2 repeats turn 1's complete blocks [0, 1] but not its partial block 2.
    hashes = make_list_column(np.array([3, 4]), np.array([0, 1, 2, 0, 1, 5, 6]))
    root, turn = infer_conversations(hashes, np.array([1200, 1800]))
    assert list(turn) == [1, 2] and root[0] == root[1]
    # A shared system block alone (one complete block) does not link requests.
    hashes = make_list_column(np.array([2, 3]), np.array([0, 1, 0, 7, 8]))
    _, turn = infer_conversations(hashes, np.array([600, 1100]))
    assert list(turn) == [1, 1]


def test_mooncake_adapter_recovers_planted_conversations(tmp_path):
    rows = planted_conversations(seed=2)
    path = tmp_path / "planted.jsonl"
    with open(path, "w") as f:
        for t, _, _, ids, tokens in rows:
            f.write(
                json.dumps(
                    {"timestamp": int(t * 1000), "input_length": tokens, "output_length": 10, "hash_ids": ids}
                )
                + "\n"
            )
    trace = read_trace(path, chunk_rows=50)
    assert_same_conversations(
        [r[1] for r in rows],
        np.array([r[2] for r in rows]),
        trace["conversation_id"],
        trace["turn"].to_numpy(),
    )


def test_shared_mooncake_follow_up_share(shared_traces):
    trace = read_trace(shared_traces / "mooncake-fast25" / "conversation_trace.jsonl")
    follow_ups = int((trace["turn"] > 1).sum())
    conversations = trace["conversation_id"].nunique()
    # SOURCE.md counts 3,974 with "all blocks but the last"; complete blocks (input // 512) differ
    # only for the 22 inputs that are exact multiples of 512, which adds one follow-up.
    assert follow_ups == 3975
    assert conversations == 12031 - 3975
    assert len(trace) / conversations == pytest.approx(1.493, abs=1e-3)
    assert trace["turn"].max() == 43
