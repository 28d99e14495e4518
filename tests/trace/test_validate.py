import json
import warnings

import numpy as np
import pandas as pd
import pytest

from servegen_ml.cli import main
from servegen_ml.trace.io import iter_trace_chunks, read_trace
from servegen_ml.trace.schema import make_list_column, ordered_columns
from servegen_ml.trace.validate import MAX_LISTED_ROWS, TraceValidationError, validate_trace
from tests.factories import synthetic_trace


def good_frame(n: int = 8) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": np.arange(n, dtype=float),
            "client_id": [f"c{i % 2}" for i in range(n)],
            "request_id": [f"r{i}" for i in range(n)],
            "input_tokens": np.full(n, 100),
            "output_tokens": np.full(n, 50),
            "reasoning_tokens": np.full(n, 10),
            "image_tokens": ["[256, 576]"] * n,
            "turn": np.ones(n, dtype=int),
        }
    )


# (column, bad CSV cell, problem text) — each injected at data row 5 of a CSV.
CSV_CASES = [
    ("timestamp", "noon", "not a number"),
    ("timestamp", "", "missing value"),
    ("input_tokens", "-3", "negative value"),
    ("input_tokens", "2.5", "not an integer"),
    ("output_tokens", "", "missing value"),
    ("output_tokens", "lots", "not a number"),
    ("reasoning_tokens", "60", "reasoning_tokens > output_tokens"),
    ("image_tokens", "[256, x]", "list item is not a non-negative integer"),
    ("image_tokens", "[256, -1]", "list item is not a non-negative integer"),
    ("image_tokens", "256", "not a list of integers"),
    ("request_id", "r1", "duplicate id"),
    ("client_id", "", "missing value"),
    ("turn", "0", "turn must be >= 1"),
]


def write_bad_csv(path, column, cell, row=5):
    df = good_frame().astype(object)
    df.loc[row - 1, column] = cell
    df.to_csv(path, index=False)


@pytest.mark.parametrize(("column", "cell", "text"), CSV_CASES)
def test_bad_csv_cell_names_file_row_column_and_writes_nothing(tmp_path, capsys, column, cell, text):
    src, out = tmp_path / "bad.csv", tmp_path / "out" / "t.parquet"
    write_bad_csv(src, column, cell)
    assert main(["convert", f"data.path={src}", f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert f"{src}, row 5, column '{column}'" in err and text in err
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))
    with pytest.raises(TraceValidationError) as info:
        read_trace(src)
    assert [(p.column, p.rows) for p in info.value.problems] == [(column, [5])]


@pytest.mark.parametrize(
    ("record_patch", "column", "text"),
    [
        ({"input_tokens": True}, "input_tokens", "wrong type"),
        ({"input_tokens": [3]}, "input_tokens", "wrong type"),
        ({"timestamp": "soon"}, "timestamp", "not a number"),
        ({"timestamp": None}, "timestamp", "missing value"),
        ({"image_tokens": [1, -2]}, "image_tokens", "list item is not a non-negative integer"),
        ({"image_tokens": [1.5]}, "image_tokens", "list item is not a non-negative integer"),
        ({"image_tokens": "x"}, "image_tokens", "not a list"),
        ({"client_id": [1]}, "client_id", "wrong type"),
    ],
)
def test_bad_jsonl_value_names_line_and_column(tmp_path, capsys, record_patch, column, text):
    src, out = tmp_path / "bad.jsonl", tmp_path / "t.csv"
    records = [
        {
            "timestamp": float(i),
            "client_id": "a",
            "input_tokens": 5,
            "output_tokens": 6,
            "image_tokens": [576],
        }
        for i in range(6)
    ]
    records[3].update(record_patch)
    lines = [json.dumps(r) for r in records]
    lines.insert(2, "")  # a blank line: line numbers still count it
    src.write_text("\n".join(lines) + "\n")
    assert main(["validate", f"data.path={src}"]) == 2
    err = capsys.readouterr().err
    assert f"{src}, line 5, column '{column}'" in err and text in err
    assert main(["convert", f"data.path={src}", f"out={out}"]) == 2
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_missing_required_column(tmp_path, capsys):
    src = tmp_path / "no_output.csv"
    good_frame().drop(columns="output_tokens").to_csv(src, index=False)
    with pytest.raises(TraceValidationError, match=r"column 'output_tokens': missing required column"):
        read_trace(src, format="native")
    assert main(["validate", f"data.path={src}", "data.format=native"]) == 2
    assert "missing required column" in capsys.readouterr().err


def test_adapter_errors_use_the_files_column_names(tmp_path):
    src = tmp_path / "moon.jsonl"
    src.write_text(
        '{"timestamp": 0, "input_length": 10, "output_length": 5}\n{"timestamp": 5, "input_length": -1, "output_length": 5}\n'
    )
    with pytest.raises(
        TraceValidationError, match=r"line 2, column 'input_length' \(input_tokens\): negative value"
    ):
        read_trace(src)


def test_duplicate_request_ids_across_chunks(tmp_path):
    src = tmp_path / "dup.csv"
    df = good_frame(10)
    df.loc[8, "request_id"] = "r2"
    df.to_csv(src, index=False)
    with pytest.raises(TraceValidationError, match=r"row 9, column 'request_id': duplicate id"):
        list(iter_trace_chunks(src, chunk_rows=3))


def test_problem_list_is_capped_with_a_count():
    df = synthetic_trace(0, 600)
    df["input_tokens"] = -df["input_tokens"]
    with pytest.raises(TraceValidationError) as info:
        validate_trace(df, "big.parquet")
    message = str(info.value)
    assert message.count("negative value") == MAX_LISTED_ROWS
    assert f"and {len(df) - MAX_LISTED_ROWS:,} more rows with 'negative'" in message
    assert info.value.problems[0].count == len(df)


def test_skip_bad_rows_drops_and_counts_by_kind(tmp_path, capsys):
    df = good_frame(10).astype(object)
    df.loc[1, "input_tokens"] = -1
    df.loc[4, "timestamp"] = "x"
    df.loc[6, "image_tokens"] = "[1, -1]"
    df.loc[7, "request_id"] = "r0"
    src = tmp_path / "t.csv"
    df.to_csv(src, index=False)
    with pytest.warns(UserWarning, match=r"dropped 4 bad rows of 10"):
        trace = read_trace(src, skip_bad_rows=True)
    assert len(trace) == 6 and set(trace["request_id"]) == {"r0", "r2", "r3", "r5", "r8", "r9"}
    assert main(["validate", f"data.path={src}", "data.skip_bad_rows=true"]) == 0
    out = capsys.readouterr().out
    assert "rows: 6" in out and "negative: 1" in out and "duplicate_id: 1" in out and "not_number: 1" in out


def test_unsorted_rows_are_sorted_stably_with_a_warning():
    df = synthetic_trace(1, 300)
    shuffled = df.iloc[np.random.default_rng(0).permutation(len(df))].reset_index(drop=True)
    with pytest.warns(UserWarning, match="sorted by timestamp"):
        out, report = validate_trace(shuffled)
    assert report.resorted_rows > 0
    np.testing.assert_array_equal(out["timestamp"], np.sort(df["timestamp"]))
    ties = pd.DataFrame(
        {"timestamp": [2.0, 1.0, 1.0, 1.0], "client_id": list("abcd"), "input_tokens": 1, "output_tokens": 1}
    )
    with pytest.warns(UserWarning):
        out, _ = validate_trace(ties)
    assert list(out["client_id"]) == ["b", "c", "d", "a"]


def test_valid_trace_passes_unchanged():
    df = synthetic_trace(2, 600, reasoning=True)
    df["image_tokens"] = make_list_column(
        np.arange(len(df)) % 3, np.full((np.arange(len(df)) % 3).sum(), 576)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, report = validate_trace(df)
    pd.testing.assert_frame_equal(out, df[ordered_columns(df.columns)])
    assert report.rows_dropped == 0
