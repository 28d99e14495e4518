"""format=aiperf_bailian: follow-ups carry only their new tokens, as AIPerf's bailian_trace replays a chain."""

import json
import math

import numpy as np

from servegen_ml.export import export_trace, meta_path
from servegen_ml.trace.schema import make_trace


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def chat_trace():
    # Conversation x: 3 turns whose prompts grow by prompt + answer + new text;
    # y: a follow-up shorter than its predecessor's prompt + answer; z: one turn.
    return make_trace(
        {
            "timestamp": [5.0, 1.0, 0.0, 9.0, 2.0, 3.0],
            "client_id": ["a"] * 6,
            "input_tokens": [1000 + 50 + 30, 1000, 400, 1080 + 70 + 5, 700, 710],
            "output_tokens": [70, 50, 20, 9, 40, 11],
            "conversation_id": ["x", "x", "z", "x", "y", "y"],
            "turn": [2, 1, 1, 3, 1, 2],
        }
    )


def test_follow_ups_count_new_tokens_and_link_their_predecessor(tmp_path):
    out = export_trace(chat_trace(), tmp_path / "t.jsonl", "aiperf_bailian")
    rows = read_jsonl(out)
    # File order is by arrival: z1, x1, y1, y2, x2, x3.
    assert [(r["turn"], r["parent_chat_id"], r["input_length"], r["output_length"]) for r in rows] == [
        (1, -1, 400, 20),
        (1, -1, 1000, 50),
        (1, -1, 700, 40),
        (2, -1, 710, 11),  # 710 <= 700 + 40: cannot be new tokens, so a chain starts with the whole prompt
        (2, 1, 30, 70),
        (3, 4, 5, 9),
    ]
    # What AIPerf sends for a linked turn: the chain's prompts and answers, then the new tokens.
    sent = {}
    for i, r in enumerate(rows):
        p = r["parent_chat_id"]
        sent[i] = r["input_length"] + (sent[p] + rows[p]["output_length"] if p >= 0 else 0)
    assert [sent[i] for i in range(len(rows))] == [400, 1000, 700, 710, 1080, 1155]
    for r in rows:
        assert len(r["hash_ids"]) == math.ceil(r["input_length"] / 16)
    # The restarted chain still begins with its (whole-prompt) predecessor's complete blocks.
    assert rows[3]["hash_ids"][: 700 // 16] == rows[2]["hash_ids"][: 700 // 16]
    other = [h for i, r in enumerate(rows) if i != 3 for h in r["hash_ids"]]
    assert len(other) == len(set(other))
    meta = json.loads(meta_path(out).read_text())
    assert meta["chains_restarted"] == 1 and meta["format"] == "aiperf_bailian"
    assert "bailian_trace" in meta["used_by"]


def test_whole_prompt_exports_name_their_readers(tmp_path):
    used_by = {}
    for fmt in ("mooncake", "bailian", "aiperf_bailian"):
        out = export_trace(chat_trace(), tmp_path / f"{fmt}.jsonl", fmt)
        used_by[fmt] = json.loads(meta_path(out).read_text())["used_by"]
    assert "--timed-trace-chunk-hash-size 512" in used_by["mooncake"]
    assert "hash_id_block_size=16" in used_by["bailian"]
    assert "--timed-trace-chunk-hash-size 16" in used_by["bailian"]
    assert "format=aiperf_bailian" in used_by["bailian"]


def test_empty_trace(tmp_path):
    empty = make_trace(
        {"timestamp": np.array([], dtype=float), "client_id": [], "input_tokens": [], "output_tokens": []}
    )
    assert export_trace(empty, tmp_path / "e.jsonl", "aiperf_bailian").read_text() == ""


def test_aiperf_sends_every_whole_prompt_of_a_growing_conversation(tmp_path):
    from tests.factories import synthetic_trace

    df = synthetic_trace(seed=4, duration_s=600.0, n_clients=2)
    n = len(df)
    turn = np.arange(n) % 4 + 1  # rows in groups of 4 turns, prompts growing by prompt + answer + new
    inputs = df["input_tokens"].to_numpy().copy()
    outputs = df["output_tokens"].to_numpy()
    for i in np.flatnonzero(turn > 1):
        inputs[i] = inputs[i - 1] + outputs[i - 1] + 1 + i % 97
    ts = np.sort(df["timestamp"].to_numpy())
    df = df.assign(
        timestamp=ts, input_tokens=inputs, conversation_id=[f"c{i // 4}" for i in range(n)], turn=turn
    )
    rows = read_jsonl(export_trace(df, tmp_path / "t.jsonl", "aiperf_bailian"))
    whole = read_jsonl(export_trace(df, tmp_path / "w.jsonl", "bailian"))
    sent = []
    for r in rows:
        p = r["parent_chat_id"]
        sent.append(r["input_length"] + (sent[p] + rows[p]["output_length"] if p >= 0 else 0))
    assert sent == [w["input_length"] for w in whole]
    assert [r["parent_chat_id"] for r in rows] == [w["parent_chat_id"] for w in whole]
    assert sum(r["parent_chat_id"] >= 0 for r in rows) == (turn > 1).sum() > 10
