import warnings

import numpy as np
import pandas as pd
import pytest

from servegen_ml.cli import main
from servegen_ml.trace.io import read_trace, write_trace
from tests.factories import synthetic_trace


def test_validate_shared_mooncake(shared_traces, capsys):
    path = shared_traces / "mooncake-fast25" / "conversation_trace.jsonl"
    assert main(["validate", f"data.path={path}"]) == 0
    out = capsys.readouterr().out
    assert "12,031 requests from 1 client(s) over 3,537 s" in out
    assert "format mooncake" in out and "follow_up_share: 0.330" in out and "conversations: 8,056" in out


def test_validate_reports_all_problems_with_exit_2(tmp_path, capsys):
    df = synthetic_trace(0, 300).astype({"input_tokens": object})
    df.loc[[3, 40], "input_tokens"] = [-1, "many"]
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    assert main(["validate", f"data.path={path}", "chunk_rows=10"]) == 2
    err = capsys.readouterr().err
    assert f"{path}, row 4, column 'input_tokens': negative value" in err
    assert f"{path}, row 41, column 'input_tokens': not a number: 'many'" in err  # found in a later chunk


def test_convert_streams_and_round_trips(tmp_path, capsys):
    df = synthetic_trace(1, 600)
    write_trace(df, tmp_path / "in.jsonl")
    out = tmp_path / "out.parquet"
    assert main(["convert", f"data.path={tmp_path / 'in.jsonl'}", f"out={out}", "chunk_rows=100"]) == 0
    assert f"{len(df):,} requests" in capsys.readouterr().out
    pd.testing.assert_frame_equal(read_trace(out), df)


def test_convert_unsorted_input_falls_back_to_sorting(tmp_path):
    df = synthetic_trace(2, 600)
    half = len(df) // 2
    write_trace(pd.concat([df.iloc[half:], df.iloc[:half]], ignore_index=True), tmp_path / "in.parquet")
    out = tmp_path / "out.csv"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["convert", f"data.path={tmp_path / 'in.parquet'}", f"out={out}", "chunk_rows=50"]) == 0
    assert any("reading the whole trace into memory" in str(w.message) for w in caught)
    pd.testing.assert_frame_equal(read_trace(out), df)


def test_convert_window_and_adapter_option(tmp_path):
    path = tmp_path / "burst.csv"
    path.write_text(
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        + "".join(f"{t},GPT-4,10,5,15,API log\n" for t in range(10))
    )
    out = tmp_path / "w.jsonl"
    args = [
        "convert",
        f"data.path={path}",
        f"out={out}",
        "start_s=3",
        "duration_s=4",
        "+data.client_by=model",
    ]
    assert main(args) == 0
    back = read_trace(out)
    assert back["timestamp"].tolist() == [3.0, 4.0, 5.0, 6.0] and set(back["client_id"]) == {"GPT-4"}


def test_convert_failures_write_nothing(tmp_path, capsys):
    df = synthetic_trace(3, 300).astype({"output_tokens": float})
    df.loc[len(df) - 1, "output_tokens"] = np.nan  # the very last row: earlier chunks were already written
    write_trace(synthetic_trace(3, 300), tmp_path / "ok.parquet")
    df.to_csv(tmp_path / "bad.csv", index=False)
    out = tmp_path / "out" / "t.parquet"
    assert main(["convert", f"data.path={tmp_path / 'bad.csv'}", f"out={out}", "chunk_rows=10"]) == 2
    assert f"row {len(df)}, column 'output_tokens': missing value" in capsys.readouterr().err
    assert not out.exists() and not any(out.parent.iterdir())
    assert main(["convert", f"data.path={tmp_path / 'ok.parquet'}", f"out={tmp_path / 't.xlsx'}"]) == 2
    assert "unknown output format" in capsys.readouterr().err and not (tmp_path / "t.xlsx").exists()
    assert main(["convert", f"data.path={tmp_path / 'missing.csv'}", f"out={out}"]) == 2


def test_convert_skip_bad_rows(tmp_path, capsys):
    df = synthetic_trace(4, 300).astype({"input_tokens": object})
    df.loc[5, "input_tokens"] = "x"
    df.to_csv(tmp_path / "bad.csv", index=False)
    out = tmp_path / "t.parquet"
    assert (
        main(["convert", f"data.path={tmp_path / 'bad.csv'}", f"out={out}", "data.skip_bad_rows=true"]) == 0
    )
    assert "skipped:" in capsys.readouterr().out and len(read_trace(out)) == len(df) - 1


def test_help(capsys):
    assert main(["validate", "--help"]) == 0 and "data.path" in capsys.readouterr().out
    assert main(["convert", "--help"]) == 0 and "duration_s" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("pool", "field"), [("reason/deepseek-r1", "reasoning_tokens"), ("multimodal/mm-image", "image_tokens")]
)
def test_convert_servegen_pool(shared_traces, tmp_path, capsys, pool, field):
    pytest.importorskip(
        "servegen_ml.pool", reason="ServeGen pool sampling (servegen_ml.pool) not available yet"
    )
    out = tmp_path / "pool.parquet"
    args = [
        "convert",
        f"data.path={shared_traces / 'servegen' / pool}",
        "start_s=0",
        "duration_s=600",
        "seed=0",
        f"out={out}",
    ]
    assert main(args) == 0
    trace = read_trace(out)
    assert len(trace) > 1000 and trace["client_id"].nunique() > 5 and field in trace
    assert trace["timestamp"].min() >= 0 and trace["timestamp"].max() < 600


def test_convert_takes_the_window_under_data_too_but_not_twice(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text(
        "timestamp,client_id,input_tokens,output_tokens\n" + "".join(f"{t},a,10,5\n" for t in range(10))
    )
    out = tmp_path / "w.jsonl"
    assert main(["convert", f"data.path={path}", f"out={out}", "+data.start_s=3", "+data.duration_s=4"]) == 0
    assert read_trace(out)["timestamp"].tolist() == [3.0, 4.0, 5.0, 6.0]
    again = tmp_path / "again.jsonl"
    assert main(["convert", f"data.path={path}", f"out={again}", "start_s=1", "+data.start_s=3"]) == 2
    assert "start_s is given twice" in capsys.readouterr().err and not again.exists()
