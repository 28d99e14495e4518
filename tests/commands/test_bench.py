import json

import numpy as np
import pytest

from servegen_ml.cli import main
from servegen_ml.trace.io import write_trace
from tests.factories import synthetic_trace

FIGURES = {
    "length_cdfs.png",
    "window_cv_cdf.png",
    "dispersion.png",
    "rate_over_time.png",
    "token_load_cdfs.png",
    "client_rate_cdf.png",
}


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    write_trace(synthetic_trace(seed=0, duration_s=1200.0), d / "test.parquet")
    write_trace(synthetic_trace(seed=1, duration_s=1200.0), d / "ref.parquet")
    write_trace(synthetic_trace(seed=2, duration_s=1200.0), d / "same.parquet")
    poisson = synthetic_trace(seed=3, duration_s=1200.0)
    poisson["timestamp"] = np.sort(np.random.default_rng(0).uniform(0, 1200.0, len(poisson)))
    write_trace(poisson, d / "poisson.parquet")
    return d


def test_compare_mode_writes_metrics_report_and_figures(traces, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "bench",
        f"data.path={traces / 'test.parquet'}",
        f"reference={traces / 'ref.parquet'}",
        f"synthetic=[{traces / 'same.parquet'},{traces / 'poisson.parquet'}]",
        f"out={out}",
        "quiet=true",
    ]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["synthetic"]) == {"same", "poisson"}
    ratio = {
        n: m["synthetic"][n]["ratio_to_noise_floor"]["M2_burstiness"]["distance"] for n in ("same", "poisson")
    }
    # A Poisson stream is far burstier-wrong than another draw of the same bursty process.
    assert ratio["poisson"] > 1.5 * ratio["same"]
    assert m["noise_floor"]["M3_marginals"]["distance"] > 0
    # M4's floor is bounded below by the correlations' sampling error (metrics.m4_floor).
    m4 = m["noise_floor"]["M4_dependence"]["stats"]["input_output.overall"]
    assert m["noise_floor"]["M4_dependence"]["components"]["input_output.overall"] == max(
        m4["observed_difference"], m4["expected_difference"]
    )
    assert m4["expected_difference"] > 0
    prov = m["provisioning"]
    assert prov["real_test"]["instances"] >= 1 and "under_provisioning_error" in prov["synthetic"]["poisson"]
    report = (out / "report.md").read_text()
    assert (
        "| M2_burstiness |" in report and "## Provisioning (M7)" in report and "servegen-ml bench" in report
    )
    assert FIGURES <= {p.name for p in out.glob("*.png")}
    assert "ratio to the noise floor" in capsys.readouterr().out


def test_compare_mode_needs_reference_and_synthetic(traces, tmp_path, capsys):
    assert main(["bench", f"data.path={traces / 'test.parquet'}", f"out={tmp_path / 'o'}"]) == 2
    assert "reference=" in capsys.readouterr().err


def test_head_to_head_mode(traces, tmp_path):
    out = tmp_path / "h2h"
    argv = [
        "bench",
        f"data.path={traces / 'test.parquet'}",
        "split=0.5",
        "models=[naive,parametric]",
        "seeds=[0,1]",
        f"out={out}",
        "quiet=true",
        "provisioning.max_instances=16",
    ]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    h = m["head_to_head"]
    assert set(h["models"]) == {"naive", "parametric"} and h["sample_start_s"] == pytest.approx(
        h["sample_duration_s"], rel=0.01
    )
    for entry in h["models"].values():
        assert entry["seeds"] == [0, 1] and len(entry["m1"]) == 1 and entry["m1"][0]["distance"] is not None
        assert len(entry["instances"]) == 2
    assert set(m["synthetic"]) == {"naive/seed0", "naive/seed1", "parametric/seed0", "parametric/seed1"}
    # The naive model has a single client, so client heterogeneity is absent for it only.
    assert h["models"]["naive"]["ratio_mean"]["client_heterogeneity"] is None
    assert h["models"]["parametric"]["ratio_mean"]["client_heterogeneity"] is not None
    # clients=new:N against the real test clients, every client counting once; naive has no clients.
    new = h["new_clients"]
    assert new["n"] >= 2 and "no clients" in new["models"]["naive"]["error"]
    seeds = new["models"]["parametric"]["seeds"]
    assert [r["seed"] for r in seeds] == [0, 1] and all(r["ratio_to_noise_floor"] > 0 for r in seeds)
    assert seeds[0]["stats"]["clients"]["synthetic"] <= new["n"]
    assert m["noise_floor"]["M9_calibration"]["stats"]["bins"] >= 1
    report = (out / "report.md").read_text()
    assert "Held-out NLL (M1)" in report and "mean ± sd" in report
    assert f"clients=new:{new['n']}" in report and "M9_calibration" in report
    assert "models=[naive,parametric]" in m["command"]


def test_head_to_head_rejects_unknown_model(traces, tmp_path, capsys):
    argv = [
        "bench",
        f"data.path={traces / 'test.parquet'}",
        "models=[oracle]",
        f"out={tmp_path / 'x'}",
        "quiet=true",
    ]
    assert main(argv) == 2
    assert "unknown model 'oracle'" in capsys.readouterr().err


def test_head_to_head_keeps_other_models_when_one_fails(traces, tmp_path):
    out = tmp_path / "h2h"
    argv = [
        "bench",
        f"data.path={traces / 'test.parquet'}",
        "models=[naive,parametric]",
        f"out={out}",
        "quiet=true",
        "+model_args.parametric.min_events=1",
        "provisioning.enabled=false",
    ]
    with pytest.warns(UserWarning, match="parametric"):
        assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert "min_events" in m["head_to_head"]["models"]["parametric"]["error"]
    assert set(m["synthetic"]) == {"naive/seed0"} and m["provisioning"] is None
    assert "parametric failed" in (out / "report.md").read_text()


def test_reproducing_command_names_the_trainer_and_overrides():
    from servegen_ml.commands.bench import _command
    from servegen_ml.core.config import compose

    overrides = [
        "data.path=t.parquet",
        "out=o",
        "models=[neural]",
        "trainer=fast",
        "trainer.max_epochs=7",
        "+model_args.neural.hidden=32",
        "provisioning.tbt_p99_s=0.2",
        "trainer.default_root_dir=null",
        "trainer.resume=false",
    ]
    command = _command(compose("bench", overrides), ["neural"], [])
    for part in [
        "models=[neural]",
        "trainer=fast",
        "trainer.max_epochs=7",
        "+model_args.neural.hidden=32",
        "provisioning.tbt_p99_s=0.2",
        "trainer.resume=false",
        "out=o",
    ]:
        assert part in command.split()
    default_trainer = _command(
        compose("bench", [*overrides[:3], "trainer.default_root_dir=null"]), ["neural"], []
    )
    assert "trainer.default_root_dir=null" in default_trainer.split() and "trainer=" not in default_trainer
