import json

import numpy as np
import pandas as pd
import pytest

from servegen_ml.trace.io import detect_format, read_trace
from servegen_ml.trace.validate import TraceValidationError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------- mooncake


def mooncake_records():
    return [
        {"timestamp": 0, "input_length": 1100, "output_length": 7, "hash_ids": [0, 1, 2]},
        {"timestamp": 1500, "input_length": 900, "output_length": 0, "hash_ids": [0, 3]},
        {
            "timestamp": 2250,
            "input_length": 1600,
            "output_length": 9,
            "hash_ids": [0, 1, 4, 5],
            "extra": "ignored",
        },
        {"timestamp": 4000, "input_length": 2100, "output_length": 9, "hash_ids": [0, 1, 4, 6, 7]},
    ]


def test_mooncake_units_client_and_conversations(tmp_path):
    path = write_jsonl(tmp_path / "trace.jsonl", mooncake_records())
    assert detect_format(path) == "mooncake"
    df = read_trace(path)
    assert df["timestamp"].tolist() == [0.0, 1.5, 2.25, 4.0]
    assert df["input_tokens"].tolist() == [1100, 900, 1600, 2100] and df["output_tokens"].tolist() == [
        7,
        0,
        9,
        9,
    ]
    assert set(df["client_id"]) == {"mooncake"} and "hash_ids" not in df
    assert df["turn"].tolist() == [1, 1, 2, 3]
    assert df["conversation_id"].tolist() == ["0", "1", "0", "0"]


def test_mooncake_options(tmp_path):
    path = write_jsonl(tmp_path / "trace.jsonl", mooncake_records())
    df = read_trace(path, client_id="kimi", infer_conversations=False)
    assert set(df["client_id"]) == {"kimi"} and "turn" not in df and "conversation_id" not in df
    with pytest.raises(ValueError, match="unknown option"):
        read_trace(path, client_by="model")


def test_mooncake_bad_hash_ids_name_the_line(tmp_path):
    records = mooncake_records()
    records[2]["hash_ids"] = [0, "x"]
    path = write_jsonl(tmp_path / "trace.jsonl", records)
    with pytest.raises(TraceValidationError, match=r"line 3, column 'hash_ids'"):
        read_trace(path)


# ---------------------------------------------------------------- azure


def test_azure_timestamps_become_seconds_since_first_row(tmp_path):
    path = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.5,396,109\n"
        "2023-11-16 18:16:46.6805900,879,0\n"
    )
    assert detect_format(path) == "azure"
    df = read_trace(path)
    np.testing.assert_allclose(df["timestamp"], [0.0, 3.81941, 60.0], atol=1e-6)
    assert df["input_tokens"].tolist() == [374, 396, 879] and df["output_tokens"].tolist() == [44, 109, 0]
    assert set(df["client_id"]) == {"azure"}


def test_azure_2024_offsets_and_bad_datetime(tmp_path):
    path = tmp_path / "az.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.009930+00:00,1,2\n2024-05-10 02:00:01.009930+02:00,3,4\n"
    )
    np.testing.assert_allclose(read_trace(path, client_id="code")["timestamp"], [0.0, 1.0])
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00,1,2\nyesterday,3,4\n")
    with pytest.raises(
        TraceValidationError, match=r"row 2, column 'TIMESTAMP' \(timestamp\): not a date-time"
    ):
        read_trace(path)


# ---------------------------------------------------------------- burstgpt

BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"


def test_burstgpt_clients_and_failed_requests(tmp_path):
    path = tmp_path / "BurstGPT_1.csv"
    path.write_text(
        f"{BURST_HEADER}\n5,ChatGPT,472,18,490,Conversation log\n45,GPT-4,1087,0,1087,API log\n118,ChatGPT,417,276,693,API log\n"
    )
    assert detect_format(path) == "burstgpt"
    df = read_trace(path)
    assert df["client_id"].tolist() == ["ChatGPT|Conversation log", "GPT-4|API log", "ChatGPT|API log"]
    assert df["output_tokens"].tolist() == [18, 0, 276]  # the failed request is kept
    assert read_trace(path, client_by="model")["client_id"].tolist() == ["ChatGPT", "GPT-4", "ChatGPT"]
    assert set(read_trace(path, client_by="none")["client_id"]) == {"burstgpt"}
    with pytest.raises(ValueError, match="client_by"):
        read_trace(path, client_by="user")


def test_burstgpt_sessions_number_turns_across_chunks(tmp_path):
    path = tmp_path / "burst.csv"
    rows = [(1, "s1"), (2, "s2"), (3, "s1"), (4, ""), (5, "s1"), (6, "s2")]
    path.write_text(
        f"{BURST_HEADER},Session ID\n"
        + "".join(f"{t},ChatGPT,10,5,15,Conversation log,{s}\n" for t, s in rows)
    )
    df = read_trace(path, chunk_rows=2)
    assert df["conversation_id"].tolist() == ["s1", "s2", "s1", "row-4", "s1", "s2"]
    assert df["turn"].tolist() == [1, 1, 2, 1, 3, 2]


# ---------------------------------------------------------------- bailian


def bailian_records():
    rows = [  # chat_id, parent, turn, t
        (10, -1, 1, 0.5),
        (11, -1, 1, 1.0),
        (12, 10, 2, 2.0),
        (13, 99, 3, 2.5),
        (14, 12, 3, 3.0),
        (15, 13, 4, 4.0),
        (16, 14, 4, 5.0),
    ]
    return [
        {
            "chat_id": c,
            "parent_chat_id": p,
            "timestamp": t,
            "input_length": 100 * k,
            "output_length": 10,
            "type": "text" if c % 2 else "search",
            "turn": k,
            "hash_ids": [1, 2],
        }
        for c, p, k, t in rows
    ]


def test_bailian_parent_chains_across_chunks(tmp_path):
    path = write_jsonl(tmp_path / "qwen_traceA.jsonl", bailian_records())
    assert detect_format(path) == "bailian"
    df = read_trace(path, chunk_rows=2)
    assert df["request_id"].tolist() == ["10", "11", "12", "13", "14", "15", "16"]
    # 13's parent 99 is outside the file: 99 is the root of 13 and 15.
    assert df["conversation_id"].tolist() == ["10", "11", "10", "99", "10", "99", "10"]
    assert df["turn"].tolist() == [1, 1, 2, 3, 3, 4, 4]
    assert set(df["client_id"]) == {"bailian"}
    assert read_trace(path, client_by="type")["client_id"].tolist()[:2] == ["search", "text"]


def test_bailian_duplicate_chat_id(tmp_path):
    records = bailian_records()
    records[4]["chat_id"] = 11
    path = write_jsonl(tmp_path / "b.jsonl", records)
    with pytest.raises(TraceValidationError, match=r"line 5, column 'chat_id': duplicate id"):
        read_trace(path, chunk_rows=3)


# ---------------------------------------------------------------- native


def test_native_single_client_option_and_ignored_columns(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame(
        {"timestamp": [0.0, 1.0], "input_tokens": [1, 2], "output_tokens": [3, 4], "note": ["a", "b"]}
    ).to_csv(path, index=False)
    with (
        pytest.raises(TraceValidationError, match="column 'client_id': missing required column"),
        pytest.warns(UserWarning),
    ):
        read_trace(path)
    with pytest.warns(UserWarning, match=r"ignoring columns .*'note'"):
        df = read_trace(path, client_id="me")
    assert df["client_id"].tolist() == ["me", "me"]


def test_native_ids_stay_strings(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "timestamp,client_id,request_id,input_tokens,output_tokens\n0,007,None,1,1\n1,NA,0042,1,1\n"
    )
    df = read_trace(path)
    assert df["client_id"].tolist() == ["007", "NA"] and df["request_id"].tolist() == ["None", "0042"]


# ---------------------------------------------------------------- servegen


def write_tiny_pool(directory):
    directory.mkdir()
    dataset = {"0": {"input_tokens": "{100: 0.5, 300: 0.5}", "output_tokens": "{20: 1.0}"}}
    for client, rate in ((1, 2.0), (2, 0.5)):
        rows = "".join(f"{w},{rate},1.0,Gamma,1.0,{1 / rate}\n" for w in range(0, 3600, 600))
        (directory / f"chunk-{client}-trace.csv").write_text(rows)
        (directory / f"chunk-{client}-dataset.json").write_text(json.dumps(dataset))


def test_servegen_pool_is_sampled(tmp_path):
    from servegen_ml.pool import read_source

    pool = tmp_path / "pool"
    write_tiny_pool(pool)
    assert detect_format(pool) == "servegen"
    with pytest.raises(ValueError, match="sampled, not read"):
        read_trace(pool, start_s=0, duration_s=1200, seed=3)
    df = read_source(pool, start_s=0, duration_s=1200, seed=3)
    counts = df["client_id"].value_counts()
    assert (
        len(counts) == 2
        and abs(counts.max() - 2400) < 5 * np.sqrt(2400)
        and abs(counts.min() - 600) < 5 * np.sqrt(600)
    )
    assert set(df["input_tokens"]) <= {100, 300} and df["timestamp"].is_monotonic_increasing
    pd.testing.assert_frame_equal(df, read_source(pool, start_s=0, duration_s=1200, seed=3))
    with pytest.raises(ValueError, match="duration_s"):
        read_source(pool)
