import json
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from servegen_ml import cli
from servegen_ml.characterize.accumulate import CharacterizeOptions
from servegen_ml.characterize.run import characterize_chunks
from servegen_ml.trace.schema import make_trace, to_arrow
from tests.factories import gamma_arrivals, synthetic_trace


def chunks_of(trace: pd.DataFrame, rows: int):
    return [trace.iloc[i : i + rows].reset_index(drop=True) for i in range(0, len(trace), rows)]


def characterize(trace: pd.DataFrame, rows: int = 5000, **options):
    return characterize_chunks(
        chunks_of(trace, rows), np.random.default_rng(0), CharacterizeOptions(**options)
    )[0]


def single_stream(t: np.ndarray, client_id="c0") -> pd.DataFrame:
    n = len(t)
    return make_trace(
        {
            "timestamp": t,
            "client_id": [client_id] * n,
            "input_tokens": np.full(n, 100),
            "output_tokens": np.full(n, 10),
        }
    )


def with_conversations(trace: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = trace.copy()
    out["conversation_id"] = pd.array(
        [f"k{i}" for i in rng.integers(0, len(out) // 3, len(out))], dtype="string[pyarrow]"
    )
    return out


def test_cli_writes_report_stats_and_readable_figures(tmp_path):
    trace = with_conversations(
        synthetic_trace(seed=0, duration_s=3 * 3600, n_clients=4, multimodal=True, reasoning=True)
    )
    path = tmp_path / "trace.parquet"
    pq.write_table(to_arrow(trace), path)
    out = tmp_path / "report"
    assert (
        cli.main(["characterize", f"data.path={path}", f"out={out}", "chunk_rows=7000", "fit_sample=5000"])
        == 0
    )
    stats = json.loads((out / "stats.json").read_text())
    assert stats["trace"]["requests"] == len(trace)
    report = (out / "report.md").read_text()
    for section in (
        "## Arrivals",
        "## Lengths",
        "## Clients",
        "## Multimodal",
        "## Reasoning",
        "## Conversations",
    ):
        assert section in report
    assert set(stats["figures"]) >= {
        "arrivals_rate_cv.png",
        "arrivals_fits.png",
        "arrivals_dispersion.png",
        "lengths.png",
        "lengths_by_hour.png",
        "clients.png",
        "clients_largest.png",
        "multimodal.png",
        "reasoning.png",
        "conversations.png",
    }
    for name in stats["figures"]:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000
        assert f"]({name})" in report
    assert "arrivals_daily_weekly.png" not in stats["figures"]  # 3 hours: no daily view


def test_cli_bad_path_is_a_user_error(tmp_path, capsys):
    assert (
        cli.main(["characterize", f"data.path={tmp_path / 'missing.parquet'}", f"out={tmp_path / 'o'}"]) == 2
    )
    assert "missing.parquet" in capsys.readouterr().err


def test_recovers_a_gamma_stream_cv():
    t = gamma_arrivals(np.random.default_rng(1), rate=4.0, cv=2.5, duration_s=4 * 3600)
    stats = characterize(single_stream(t))
    assert stats["arrivals"]["window_cv"]["p50"] == pytest.approx(2.5, rel=0.1)
    assert stats["arrivals"]["inter_arrival"]["cv"] == pytest.approx(2.5, rel=0.1)
    assert stats["arrivals"]["inter_arrival"]["fits"]["best"] in ("gamma", "weibull")
    assert stats["arrivals"]["dispersion"]["60"] > 3  # bursty
    assert "clients" not in stats  # one client: no client section


def test_chooses_weibull_for_weibull_arrivals():
    rng = np.random.default_rng(2)
    t = np.cumsum(rng.weibull(0.5, 30_000) * 0.2)
    stats = characterize(single_stream(t), fit_sample=10_000)
    fits = stats["arrivals"]["inter_arrival"]["fits"]
    assert fits["best"] == "weibull"
    assert fits["families"]["weibull"]["params"]["shape"] == pytest.approx(0.5, rel=0.05)
    assert fits["families"]["weibull"]["aic"] < fits["families"]["gamma"]["aic"]


def test_recovers_a_planted_top_client_share():
    rng = np.random.default_rng(3)
    big = gamma_arrivals(rng, 3.0, 1.5, 7200)
    small = [gamma_arrivals(rng, 0.2, 1.0, 7200) for _ in range(10)]
    t = np.concatenate([big, *small])
    ids = np.concatenate([np.full(len(big), "big")] + [np.full(len(s), f"s{i}") for i, s in enumerate(small)])
    order = np.argsort(t, kind="stable")
    trace = make_trace(
        {
            "timestamp": t[order],
            "client_id": ids[order],
            "input_tokens": np.full(len(t), 5),
            "output_tokens": np.full(len(t), 5),
        }
    )
    stats = characterize(trace, rows=3000)
    share = len(big) / len(t)
    assert stats["clients"]["top_share"]["top1"] == pytest.approx(share)
    assert share == pytest.approx(0.6, abs=0.05)
    assert stats["clients"]["largest"][0]["client_id"] == "big"
    assert stats["clients"]["largest"][0]["cv"] == pytest.approx(1.5, rel=0.15)


def test_detects_a_bimodal_reasoning_ratio():
    trace = synthetic_trace(
        seed=4, duration_s=3600, n_clients=2, reasoning=True
    )  # 30 % at 0, rest Beta(5, 2)
    stats = characterize(trace)
    assert stats["reasoning"]["bimodal"] is True
    assert stats["reasoning"]["ratio"]["share_zero"] == pytest.approx(0.3, abs=0.03)
    rng = np.random.default_rng(5)
    unimodal = trace.copy()
    unimodal["reasoning_tokens"] = np.floor(rng.beta(8, 8, len(trace)) * trace["output_tokens"]).astype(
        np.int64
    )
    assert characterize(unimodal)["reasoning"]["bimodal"] is False


def test_sections_follow_the_columns():
    plain = single_stream(np.arange(2000) * 0.5)
    stats = characterize(plain)
    assert not {"clients", "multimodal", "reasoning", "conversations"} & set(stats)
    conv = characterize(with_conversations(plain))
    assert conv["conversations"]["requests"] == 2000


def _assert_close(a, b, path="stats"):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_chunk_size_does_not_change_the_statistics():
    trace = with_conversations(
        synthetic_trace(seed=6, duration_s=2 * 3600, n_clients=5, multimodal=True, reasoning=True)
    )
    small = characterize(trace, rows=1111, fit_sample=3000, row_sample=2000)
    large = characterize(trace, rows=len(trace), fit_sample=3000, row_sample=2000)
    _assert_close(small, large)


def test_a_trace_unsorted_across_chunks_is_refused():
    t = np.arange(1000, dtype=float)
    trace = single_stream(np.r_[t[500:], t[:500]])
    chunks = [trace.iloc[:500].reset_index(drop=True), trace.iloc[500:].reset_index(drop=True)]
    with pytest.raises(ValueError, match="sorted by timestamp"):
        characterize_chunks(chunks, np.random.default_rng(0))


def test_daily_and_weekly_views_of_a_planted_diurnal_pattern(tmp_path):
    from servegen_ml.characterize import figures

    rng = np.random.default_rng(7)
    t = np.cumsum(rng.exponential(10.0, 80_000))
    t = t[t < 8 * 86400]
    busy = (np.mod(t, 86400) >= 12 * 3600) & (np.mod(t, 86400) < 18 * 3600)
    t = t[busy | (rng.random(len(t)) < 0.5)]  # half the rate outside 12:00-18:00
    stats, series = characterize_chunks(chunks_of(single_stream(t), 20_000), np.random.default_rng(0))
    hourly = series["arrivals"]["hourly"]
    hour = (np.mod(hourly["start_s"], 86400) // 3600).astype(int)
    by_hour = hourly.groupby(hour)["rate_rps"].mean()
    assert by_hour[14] / by_hour[2] == pytest.approx(2.0, rel=0.15)
    assert figures.arrivals_daily_weekly(stats, series, tmp_path / "d.png") is not None
    short = characterize_chunks([single_stream(np.arange(1000.0))], np.random.default_rng(0))
    assert figures.arrivals_daily_weekly(*short, tmp_path / "none.png") is None


def test_a_pool_directory_gets_a_convert_hint(tmp_path, capsys):
    assert cli.main(["characterize", f"data.path={tmp_path}", f"out={tmp_path / 'o'}"]) == 2
    assert "servegen-ml convert" in capsys.readouterr().err
