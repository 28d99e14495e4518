"""Bad traces: exit 2 naming the file (and row and column) from every command that reads them."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from servegen_ml.cli import main
from tests.reliability.bad_traces import BAD_TRACES, good_frame, write_bad_trace


@pytest.mark.parametrize("name", sorted(BAD_TRACES))
@pytest.mark.parametrize("command", ["validate", "convert", "train", "export", "characterize"])
def test_bad_trace_is_exit_2_naming_file_row_column(name, command, tmp_path, capsys):
    trace, expected = write_bad_trace(name, tmp_path)
    out = tmp_path / {"validate": "x", "convert": "o.parquet", "train": "ck", "export": "o.jsonl"}.get(
        command, "chars"
    )
    args = [command, f"data.path={trace}"] + ([] if command == "validate" else [f"out={out}"])
    if command == "export":
        args.append("format=mooncake")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bug" not in err
    for text in expected:
        assert text in err, (text, err)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_millisecond_timestamps_warn_with_the_fix(tmp_path, capsys):
    frame = good_frame().assign(timestamp=lambda f: (f.index * 100).astype(int))
    frame.to_csv(tmp_path / "ms.csv", index=False)
    with pytest.warns(UserWarning, match="look like milliseconds.*divide the column by 1000"):
        assert main(["validate", f"data.path={tmp_path / 'ms.csv'}"]) == 0
    # Seconds with sub-second resolution are not flagged.
    good_frame().to_csv(tmp_path / "s.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["validate", f"data.path={tmp_path / 's.csv'}"]) == 0


def test_all_equal_timestamps_warn_and_training_refuses(tmp_path, capsys):
    good_frame().assign(timestamp=5.0).to_csv(tmp_path / "eq.csv", index=False)
    with pytest.warns(UserWarning, match="same timestamp"):
        assert main(["validate", f"data.path={tmp_path / 'eq.csv'}"]) == 0
    with pytest.warns(UserWarning, match="same timestamp"):
        assert main(["train", f"data.path={tmp_path / 'eq.csv'}", f"out={tmp_path / 'ck'}"]) == 2
    assert "same timestamp" in capsys.readouterr().err and not (tmp_path / "ck").exists()


def test_one_row_chunks_see_the_gaps_across_chunk_borders(tmp_path):
    # Every gap of a trace read one row at a time crosses a chunk border.
    good_frame().to_csv(tmp_path / "s.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["validate", f"data.path={tmp_path / 's.csv'}", "chunk_rows=1"]) == 0
    good_frame().assign(timestamp=5.0).to_csv(tmp_path / "eq.csv", index=False)
    with pytest.warns(UserWarning, match="same timestamp"):
        assert main(["validate", f"data.path={tmp_path / 'eq.csv'}", "chunk_rows=1"]) == 0
    good_frame().assign(timestamp=lambda f: (f.index * 100).astype(int)).to_csv(
        tmp_path / "ms.csv", index=False
    )
    with pytest.warns(UserWarning, match="look like milliseconds"):
        assert main(["validate", f"data.path={tmp_path / 'ms.csv'}", "chunk_rows=1"]) == 0


def test_one_row_trace_validates_and_characterizes(tmp_path, capsys):
    good_frame(1).to_csv(tmp_path / "one.csv", index=False)
    assert main(["validate", f"data.path={tmp_path / 'one.csv'}"]) == 0
    assert (
        main(["characterize", f"data.path={tmp_path / 'one.csv'}", f"out={tmp_path / 'c'}", "figures=false"])
        == 0
    )
    assert (tmp_path / "c" / "stats.json").is_file()


def test_named_format_missing_column_counts_the_problem(tmp_path, capsys):
    good_frame().drop(columns="output_tokens").to_csv(tmp_path / "t.csv", index=False)
    assert main(["validate", f"data.path={tmp_path / 't.csv'}", "data.format=native"]) == 2
    err = capsys.readouterr().err
    assert "1 problem(s) found" in err and "output_tokens" in err


def test_header_only_parquet_checks_its_columns(tmp_path, capsys):
    good_frame().iloc[:0].to_parquet(tmp_path / "ok.parquet")
    assert main(["validate", f"data.path={tmp_path / 'ok.parquet'}"]) == 0
    assert "timestamp, client_id, input_tokens, output_tokens" in capsys.readouterr().out
    pd.DataFrame({"timestamp": [], "client_id": [], "input_tokens": []}).to_parquet(tmp_path / "bad.parquet")
    assert main(["validate", f"data.path={tmp_path / 'bad.parquet'}", "data.format=native"]) == 2
    assert "output_tokens" in capsys.readouterr().err


def test_max_tokens_is_configurable(tmp_path, capsys):
    good_frame().to_csv(tmp_path / "t.csv", index=False)
    assert main(["validate", f"data.path={tmp_path / 't.csv'}", "data.max_tokens=80"]) == 2
    assert "max_tokens=80" in capsys.readouterr().err
    assert main(["validate", f"data.path={tmp_path / 't.csv'}", "data.max_tokens=abc"]) == 2
    assert "data.max_tokens" in capsys.readouterr().err
