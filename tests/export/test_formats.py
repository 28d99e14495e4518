import json
import math

import numpy as np
import pandas as pd
import pytest

from servegen_ml.core.version import __version__
from servegen_ml.export import FORMATS, export_trace, formats, meta_path
from servegen_ml.trace.io import read_trace
from servegen_ml.trace.schema import list_lengths, make_trace
from tests.factories import synthetic_trace


def conversational_trace(seed: int = 2) -> pd.DataFrame:
    """Multimodal trace, unsorted and shifted by 100 s, where every 3rd row opens a 1-4 turn conversation."""
    df = synthetic_trace(seed=seed, duration_s=900.0, n_clients=3, multimodal=True)
    rng = np.random.default_rng(seed)
    n = len(df)
    conv = np.array([f"conv{i // 3}" if i % 3 else "" for i in range(n)], dtype=object)
    turn = np.ones(n, dtype=np.int64)
    # Follow-ups: the next rows of each group of 3 continue the conversation opened at the group's start.
    opener = (np.arange(n) // 3) * 3
    conv[opener] = [f"conv{i // 3}" for i in opener]
    turn = np.arange(n) - opener + 1
    image_sum = (df["input_tokens"] - df["text_tokens"]).to_numpy()
    inputs = df["input_tokens"].to_numpy().copy()
    for i in range(n):  # context grows: previous input + previous output + new text + own images
        if turn[i] > 1:
            inputs[i] = inputs[i - 1] + df["output_tokens"].iloc[i - 1] + rng.integers(1, 300) + image_sum[i]
    df = df.assign(input_tokens=inputs, text_tokens=inputs - image_sum)
    df["conversation_id"] = pd.array(conv.astype(str), dtype=df["client_id"].dtype)
    df["turn"] = turn
    df["timestamp"] = df["timestamp"] + 100.0
    shuffled = np.random.default_rng(1).permutation(n)
    return df.iloc[shuffled].reset_index(drop=True)


@pytest.fixture(scope="module")
def trace() -> pd.DataFrame:
    return conversational_trace()


@pytest.fixture(scope="module")
def sorted_trace(trace) -> pd.DataFrame:
    out = trace.sort_values(["timestamp", "turn"], kind="stable").reset_index(drop=True)
    return out.assign(timestamp=out["timestamp"] - out["timestamp"].iloc[0])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_prefix_rule(rows, sorted_trace, block_tokens):
    """Follow-ups begin with their predecessor's blocks; ids outside shared prefixes are unique."""
    conv = sorted_trace["conversation_id"].to_numpy(dtype=object)
    turn = sorted_trace["turn"].to_numpy()
    row_of = {(conv[i], turn[i]): i for i in range(len(rows))}
    fresh, shared_with_prev = [], 0
    for i, row in enumerate(rows):
        prev = row_of.get((conv[i], turn[i] - 1)) if turn[i] > 1 else None
        k = 0
        if prev is not None:
            k = min(rows[prev]["input_length"] // block_tokens, len(row["hash_ids"]))
            assert row["hash_ids"][:k] == rows[prev]["hash_ids"][:k]
            shared_with_prev += k > 0
        fresh += row["hash_ids"][k:]
    assert shared_with_prev > len(rows) // 3
    assert len(fresh) == len(set(fresh))
    assert sorted(fresh) == list(range(len(fresh)))
    for row in rows:
        assert len(row["hash_ids"]) == math.ceil(row["input_length"] / block_tokens)


def test_mooncake_fields_units_order_and_hash_ids(tmp_path, trace, sorted_trace):
    out = export_trace(trace, tmp_path / "t.jsonl", "mooncake")
    rows = read_jsonl(out)
    assert len(rows) == len(trace)
    assert all(list(r) == ["timestamp", "input_length", "output_length", "hash_ids"] for r in rows)
    ts = np.array([r["timestamp"] for r in rows])
    assert all(type(r["timestamp"]) is int and type(r["input_length"]) is int for r in rows)
    assert ts[0] == 0 and (np.diff(ts) >= 0).all()
    np.testing.assert_array_equal(ts, np.rint(sorted_trace["timestamp"].to_numpy() * 1000))
    assert [r["input_length"] for r in rows] == sorted_trace["input_tokens"].tolist()
    assert [r["output_length"] for r in rows] == sorted_trace["output_tokens"].tolist()
    check_prefix_rule(rows, sorted_trace, 512)


def test_bailian_fields_units_links_and_hash_ids(tmp_path, trace, sorted_trace):
    rows = read_jsonl(export_trace(trace, tmp_path / "t.jsonl", "bailian"))
    keys = [
        "chat_id",
        "parent_chat_id",
        "timestamp",
        "input_length",
        "output_length",
        "type",
        "turn",
        "hash_ids",
    ]
    assert all(list(r) == keys for r in rows)
    assert [r["chat_id"] for r in rows] == list(range(len(rows)))
    ts = np.array([r["timestamp"] for r in rows], dtype=float)
    np.testing.assert_allclose(ts, sorted_trace["timestamp"].to_numpy(), atol=1e-6)
    for r in rows:
        if r["turn"] == 1:
            assert r["parent_chat_id"] == -1
        else:
            parent = rows[r["parent_chat_id"]]
            assert parent["turn"] == r["turn"] - 1 and parent["timestamp"] <= r["timestamp"]
    has_image = list_lengths(sorted_trace["image_tokens"]) > 0
    assert [r["type"] for r in rows] == np.where(has_image, "image", "text").tolist()
    check_prefix_rule(rows, sorted_trace, 16)


def test_vidur_csv(tmp_path, trace, sorted_trace):
    out = export_trace(trace, tmp_path / "t.csv", "vidur")
    assert out.read_text().splitlines()[0] == "arrived_at,num_prefill_tokens,num_decode_tokens"
    got = pd.read_csv(out)
    assert got["num_prefill_tokens"].dtype == np.int64 and got["num_decode_tokens"].dtype == np.int64
    np.testing.assert_allclose(got["arrived_at"], sorted_trace["timestamp"], rtol=0, atol=1e-9)
    assert got["num_prefill_tokens"].tolist() == sorted_trace["input_tokens"].tolist()
    assert got["num_decode_tokens"].tolist() == sorted_trace["output_tokens"].tolist()


def test_azure_csv(tmp_path, trace, sorted_trace):
    out = export_trace(trace, tmp_path / "t.csv", "azure")
    lines = out.read_text().splitlines()
    assert lines[0] == "TIMESTAMP,ContextTokens,GeneratedTokens"
    assert lines[1].startswith(f"{formats.AZURE_EPOCH}.000000,")
    got = pd.read_csv(out)
    wall = pd.to_datetime(got["TIMESTAMP"], format=formats.AZURE_TIME_FORMAT)
    seconds = (wall - pd.Timestamp(formats.AZURE_EPOCH)).dt.total_seconds().to_numpy()
    np.testing.assert_allclose(seconds, sorted_trace["timestamp"], atol=1e-6)
    assert got["ContextTokens"].tolist() == sorted_trace["input_tokens"].tolist()
    assert got["GeneratedTokens"].tolist() == sorted_trace["output_tokens"].tolist()


@pytest.mark.parametrize("fmt", ["mooncake", "bailian", "aiperf_bailian", "vidur", "azure"])
def test_sidecar_and_determinism(tmp_path, trace, fmt):
    given = {"seed": 7, "spec": {"duration_s": 900.0}, "checkpoint_digest": "abc"}
    a = export_trace(trace, tmp_path / "a.out", fmt, meta=given)
    b = export_trace(trace, tmp_path / "b.out", fmt, meta=given)
    assert a.read_bytes() == b.read_bytes()
    meta = json.loads(meta_path(a).read_text())
    assert meta["seed"] == 7 and meta["spec"] == {"duration_s": 900.0} and meta["checkpoint_digest"] == "abc"
    assert meta["format"] == fmt and meta["rows"] == len(trace) and meta["package_version"] == __version__
    assert meta["start_offset_s"] == pytest.approx(trace["timestamp"].min())
    fields = {
        "mooncake": ["timestamp", "input_length", "output_length", "hash_ids"],
        "bailian": [
            "chat_id",
            "parent_chat_id",
            "timestamp",
            "input_length",
            "output_length",
            "type",
            "turn",
            "hash_ids",
        ],
        "vidur": ["arrived_at", "num_prefill_tokens", "num_decode_tokens"],
        "azure": ["TIMESTAMP", "ContextTokens", "GeneratedTokens"],
    }[fmt.removeprefix("aiperf_")]
    assert sorted(meta["units"]) == sorted(fields)  # every field's unit is stated, no other
    time_unit = {
        "mooncake": "ms since",
        "bailian": "s since",
        "vidur": "s since",
        "azure": "%Y-%m-%d %H:%M:%S.%f",
    }[fmt.removeprefix("aiperf_")]
    assert time_unit in meta["units"][fields[0] if "bailian" not in fmt else "timestamp"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_chunked_writing_gives_identical_bytes(tmp_path, trace, monkeypatch):
    whole = export_trace(trace, tmp_path / "whole.jsonl", "bailian").read_bytes()
    monkeypatch.setattr(formats, "MAX_ROWS_PER_CHUNK", 7)
    monkeypatch.setattr(formats, "MAX_BLOCKS_PER_CHUNK", 50)
    chunked = export_trace(trace, tmp_path / "chunked.jsonl", "bailian").read_bytes()
    assert whole == chunked


def test_trace_without_conversations_gets_fresh_blocks(tmp_path):
    df = synthetic_trace(seed=3, duration_s=120.0, n_clients=2)
    rows = read_jsonl(export_trace(df, tmp_path / "t.jsonl", "mooncake"))
    ids = [x for r in rows for x in r["hash_ids"]]
    assert ids == list(range(len(ids)))


def test_empty_prompt_and_empty_trace(tmp_path):
    one = make_trace({"timestamp": [5.0], "client_id": ["a"], "input_tokens": [0], "output_tokens": [3]})
    rows = read_jsonl(export_trace(one, tmp_path / "one.jsonl", "mooncake"))
    assert rows == [{"timestamp": 0, "input_length": 0, "output_length": 3, "hash_ids": []}]
    empty = one.iloc[:0]
    assert export_trace(empty, tmp_path / "empty.jsonl", "bailian").read_text() == ""
    assert json.loads(meta_path(tmp_path / "empty.jsonl").read_text())["rows"] == 0


def test_bad_format_and_missing_columns(tmp_path, trace):
    with pytest.raises(ValueError, match="choose one of"):
        export_trace(trace, tmp_path / "x", "sharegpt")
    with pytest.raises(ValueError, match="output_tokens"):
        export_trace(trace.drop(columns=["output_tokens"]), tmp_path / "x", "vidur")
    assert set(FORMATS) == {"native", "mooncake", "bailian", "aiperf_bailian", "vidur", "azure"}


def same_partition(a, b) -> bool:
    """Two labelings group the rows identically."""
    pairs = set(zip(a, b))
    return len(pairs) == len(set(a)) == len(set(b))


@pytest.mark.parametrize("name", ["t.parquet", "t.jsonl", "t.csv"])
def test_native_round_trip(tmp_path, trace, sorted_trace, name):
    back = read_trace(export_trace(trace, tmp_path / name, "native"))
    pd.testing.assert_frame_equal(back, sorted_trace, check_dtype=False)


def test_mooncake_round_trip_through_our_reader(tmp_path, trace, sorted_trace):
    back = read_trace(export_trace(trace, tmp_path / "t.jsonl", "mooncake"), format="mooncake")
    np.testing.assert_allclose(back["timestamp"], np.rint(sorted_trace["timestamp"] * 1000) / 1000, atol=1e-9)
    assert back["input_tokens"].tolist() == sorted_trace["input_tokens"].tolist()
    assert back["output_tokens"].tolist() == sorted_trace["output_tokens"].tolist()
    # The reader finds a follow-up whose predecessor comes earlier in the file with two or more complete blocks.
    inputs = sorted_trace["input_tokens"].to_numpy()
    conv = sorted_trace["conversation_id"].to_numpy(dtype=object)
    turn = sorted_trace["turn"].to_numpy()
    row_of = {(conv[i], turn[i]): i for i in range(len(conv))}
    prev = [row_of[(conv[i], turn[i] - 1)] if turn[i] > 1 else len(conv) for i in range(len(conv))]
    findable = np.array([prev[i] < i and inputs[prev[i]] // 512 >= 2 for i in range(len(conv))])
    assert findable.sum() > 100
    assert (back["turn"].to_numpy()[findable] > 1).all()


def test_bailian_round_trip_through_our_reader(tmp_path, trace, sorted_trace):
    back = read_trace(export_trace(trace, tmp_path / "t.jsonl", "bailian"), format="bailian")
    np.testing.assert_allclose(back["timestamp"], sorted_trace["timestamp"], atol=1e-6)
    assert back["input_tokens"].tolist() == sorted_trace["input_tokens"].tolist()
    assert back["turn"].tolist() == sorted_trace["turn"].tolist()
    assert same_partition(back["conversation_id"].to_numpy(), sorted_trace["conversation_id"].to_numpy())


def test_azure_round_trip_through_our_reader(tmp_path, trace, sorted_trace):
    back = read_trace(export_trace(trace, tmp_path / "t.csv", "azure"), format="azure")
    np.testing.assert_allclose(back["timestamp"], sorted_trace["timestamp"], atol=1e-6)
    assert back["input_tokens"].tolist() == sorted_trace["input_tokens"].tolist()
    assert back["output_tokens"].tolist() == sorted_trace["output_tokens"].tolist()


def test_ties_in_time_keep_turn_order(tmp_path):
    df = make_trace(
        {
            "timestamp": [3.0, 3.0, 1.0],
            "client_id": ["a", "a", "b"],
            "input_tokens": [2000, 1200, 10],
            "output_tokens": [5, 6, 7],
            "conversation_id": ["x", "x", "y"],
            "turn": [2, 1, 1],
        }
    )
    rows = read_jsonl(export_trace(df, tmp_path / "t.jsonl", "bailian"))
    assert [(r["turn"], r["parent_chat_id"], r["input_length"]) for r in rows] == [
        (1, -1, 10),
        (1, -1, 1200),
        (2, 1, 2000),
    ]
    assert rows[2]["hash_ids"][:75] == rows[1]["hash_ids"][:75] and rows[2]["hash_ids"][75] > max(
        rows[1]["hash_ids"]
    )
