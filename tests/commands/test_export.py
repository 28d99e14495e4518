import json

import pandas as pd

from servegen_ml.cli import main
from servegen_ml.trace.io import write_trace
from tests.factories import synthetic_trace


def test_export_command_writes_file_and_sidecar(tmp_path, capsys):
    src = tmp_path / "trace.parquet"
    write_trace(synthetic_trace(seed=4, duration_s=300.0, n_clients=2), src)
    out = tmp_path / "out" / "trace.csv"
    assert main(["export", f"data.path={src}", "format=vidur", f"out={out}"]) == 0
    got = pd.read_csv(out)
    assert list(got.columns) == ["arrived_at", "num_prefill_tokens", "num_decode_tokens"]
    assert got["arrived_at"].iloc[0] == 0 and got["arrived_at"].is_monotonic_increasing
    meta = json.loads((tmp_path / "out" / "trace.csv.meta.json").read_text())
    assert meta["format"] == "vidur" and meta["source"] == str(src) and meta["rows"] == len(got)
    assert "wrote" in capsys.readouterr().out


def test_export_command_rejects_unknown_format_and_missing_input(tmp_path, capsys):
    assert (
        main(
            ["export", f"data.path={tmp_path / 'none.parquet'}", "format=vidur", f"out={tmp_path / 'x.csv'}"]
        )
        == 2
    )
    src = tmp_path / "trace.parquet"
    write_trace(synthetic_trace(seed=4, duration_s=60.0, n_clients=1), src)
    assert main(["export", f"data.path={src}", "format=sharegpt", f"out={tmp_path / 'x'}"]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
