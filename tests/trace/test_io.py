import gzip
import warnings

import numpy as np
import pandas as pd
import pytest

from servegen_ml.trace.io import TraceWriter, detect_format, iter_trace_chunks, read_trace, write_trace
from servegen_ml.trace.readers import TraceReadError
from servegen_ml.trace.schema import STRING_DTYPE, make_list_column
from servegen_ml.trace.summary import TraceSummary, summarize
from tests.factories import synthetic_trace


def full_trace(seed: int = 0) -> pd.DataFrame:
    df = synthetic_trace(seed, 900, n_clients=3, reasoning=True)
    n = len(df)
    rng = np.random.default_rng(seed)
    counts = rng.choice([0, 1, 2, 4], size=n)
    images = rng.choice([256, 576, 1024], size=int(counts.sum()))
    df["text_tokens"] = df["input_tokens"]
    df["input_tokens"] += np.bincount(np.repeat(np.arange(n), counts), weights=images, minlength=n).astype(
        np.int64
    )
    df["image_tokens"] = make_list_column(counts, images)
    df.insert(2, "request_id", pd.array([f"req-{i}" for i in range(n)], dtype=STRING_DTYPE))
    df["audio_tokens"] = make_list_column(np.zeros(n, dtype=int), np.zeros(0, dtype=int))
    df["conversation_id"] = pd.array([f'conv {i // 3}, "q"' for i in range(n)], dtype=STRING_DTYPE)
    df["turn"] = np.arange(n) % 3 + 1
    df["timestamp"] += 1.7e9  # epoch seconds keep their microseconds
    return df[
        [
            c
            for c in [
                "timestamp",
                "client_id",
                "request_id",
                "input_tokens",
                "output_tokens",
                "text_tokens",
                "image_tokens",
                "audio_tokens",
                "reasoning_tokens",
                "conversation_id",
                "turn",
            ]
        ]
    ]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl", ".csv.gz"])
def test_round_trip_all_formats(tmp_path, suffix):
    df = full_trace()
    path = tmp_path / f"t{suffix}"
    if suffix == ".csv.gz":
        write_trace(df, tmp_path / "t.csv")
        path.write_bytes(gzip.compress((tmp_path / "t.csv").read_bytes()))
    else:
        write_trace(df, path)
    assert detect_format(path) == "native"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = read_trace(path)
    pd.testing.assert_frame_equal(back, df)


def test_csv_list_cells_are_json_arrays(tmp_path):
    df = full_trace().head(2)[["timestamp", "client_id", "input_tokens", "output_tokens", "image_tokens"]]
    df["image_tokens"] = make_list_column(np.array([2, 0]), np.array([256, 576]))
    write_trace(df, tmp_path / "t.csv")
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[1].endswith(',"[256, 576]"') and rows[2].endswith(',"[]"')
    pd.testing.assert_frame_equal(read_trace(tmp_path / "t.csv"), df)


def test_chunked_reading_matches_whole_read(tmp_path):
    df = full_trace(1)
    write_trace(df, tmp_path / "t.parquet")
    write_trace(df, tmp_path / "t.jsonl")
    for path in (tmp_path / "t.parquet", tmp_path / "t.jsonl"):
        chunks = list(iter_trace_chunks(path, chunk_rows=97))
        assert len(chunks) == -(-len(df) // 97)
        pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), df)


def test_globally_unsorted_file_is_sorted_by_read_trace(tmp_path):
    df = full_trace(2)
    order = np.concatenate([np.arange(len(df) // 2, len(df)), np.arange(len(df) // 2)])
    write_trace(df.iloc[order].reset_index(drop=True), tmp_path / "t.parquet")
    with pytest.warns(UserWarning, match="sorted by timestamp"):
        back = read_trace(tmp_path / "t.parquet", chunk_rows=100)
    pd.testing.assert_frame_equal(back, df)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_truncated_file_is_an_error_naming_the_file(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    write_trace(full_trace(), path)
    data = path.read_bytes()
    cut = (
        len(data) - 30 if suffix != ".csv" else data.rindex(b'"conv') + 3
    )  # CSV: inside the last quoted cell
    path.write_bytes(data[:cut])
    with pytest.raises(TraceReadError, match=str(path)):
        read_trace(path)


def test_truncated_csv_row_is_reported_with_its_row(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame(
        {"timestamp": [0.0, 1.0], "client_id": ["a", "b"], "input_tokens": [1, 2], "output_tokens": [3, 4]}
    ).to_csv(path, index=False)
    path.write_bytes(path.read_bytes().rstrip()[:-2])  # the last row loses its output_tokens
    with pytest.raises(ValueError, match=rf"{path}, row 2, column 'output_tokens': missing value"):
        read_trace(path)


def test_corrupt_jsonl_line_is_named(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"timestamp": 0, "client_id": "a", "input_tokens": 1, "output_tokens": 1}\n{"timestamp": 1, "client_id\n'
    )
    with pytest.raises(TraceReadError, match=rf"{path}, line 2: not valid JSON"):
        read_trace(path)


def test_format_override_and_unknown_format(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text('{"timestamp": 1000, "input_length": 3, "output_length": 4}\n')
    assert detect_format(path) == "mooncake"
    assert read_trace(path, format="mooncake")["timestamp"].tolist() == [1.0]
    with pytest.raises(ValueError, match="unknown trace format"):
        read_trace(path, format="vidur")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="cannot tell the trace format"):
        read_trace(tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError):
        read_trace(tmp_path / "missing.csv")


def test_write_is_atomic_and_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "t.parquet"
    write_trace(full_trace(), path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError), TraceWriter(path) as writer:
        writer.write(full_trace(1))
        raise RuntimeError("interrupted after the first chunk")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_empty_trace_round_trips(tmp_path):
    empty = full_trace().iloc[:0].reset_index(drop=True)
    for suffix in (".parquet", ".csv"):
        write_trace(empty, tmp_path / f"e{suffix}")
        assert len(read_trace(tmp_path / f"e{suffix}")) == 0


def test_summary_fields():
    df = full_trace()
    s = summarize(df)
    assert s["rows"] == len(df) and s["clients"] == 3
    assert s["span_s"] == pytest.approx(df["timestamp"].max() - df["timestamp"].min())
    assert s["mean_rate_per_s"] == pytest.approx(len(df) / s["span_s"])
    assert s["fields"][:3] == ["timestamp", "client_id", "request_id"] and "image_tokens" in s["fields"]
    assert s["conversations"] == df["conversation_id"].nunique()
    streamed = TraceSummary()
    for i in range(0, len(df), 100):  # conversations span chunk boundaries
        streamed.add(df.iloc[i : i + 100])
    assert streamed.result() == s
    assert s["follow_up_share"] == pytest.approx((df["turn"] > 1).mean())
