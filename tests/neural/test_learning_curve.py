"""The learning-curve PNG written from a Lightning CSV log."""

import pandas as pd
import pytest

from servegen_ml.neural.training.learning_curve import FIGURE, write_learning_curve


def test_writes_a_png_of_the_logged_nll(tmp_path):
    log = pd.DataFrame(
        {
            "epoch": [0, 0, 0, 1, 1],
            "step": [9, 19, 19, 29, 29],
            "train_nll_step": [3.0, 2.5, None, 2.2, None],
            "train_nll_epoch": [None, None, 2.7, None, 2.3],
            "val_nll": [None, None, 2.9, None, 2.4],
        }
    )
    path = tmp_path / "metrics.csv"
    log.to_csv(path, index=False)
    out = write_learning_curve(path)
    assert out == tmp_path / FIGURE and out.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp"))


def test_no_nll_rows_no_figure_and_a_foreign_csv_is_an_error(tmp_path):
    path = tmp_path / "metrics.csv"
    pd.DataFrame({"epoch": [0], "step": [0], "lr": [1e-3]}).to_csv(path, index=False)
    assert write_learning_curve(path) is None and not (tmp_path / FIGURE).exists()
    pd.DataFrame({"a": [1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="metrics.csv: no 'step' column"):
        write_learning_curve(path)


def test_a_resumed_run_draws_its_earlier_versions_too(tmp_path, monkeypatch):
    from servegen_ml.neural.training import learning_curve

    for version, steps in ((0, [9, 19]), (1, [29, 39]), (2, [49])):
        folder = tmp_path / f"version_{version}"
        folder.mkdir()
        pd.DataFrame({"step": steps, "val_nll": [3.0 - s / 100 for s in steps]}).to_csv(
            folder / "metrics.csv", index=False
        )
    drawn = {}
    real_concat = pd.concat

    def spy(frames, **kw):
        drawn["steps"] = [int(x) for f in frames for x in f["step"]]
        return real_concat(frames, **kw)

    monkeypatch.setattr(learning_curve.pd, "concat", spy)
    assert write_learning_curve(tmp_path / "version_1" / "metrics.csv") is not None
    assert drawn["steps"] == [
        9,
        19,
        29,
        39,
    ]  # version_0 then version_1; the later version_2 is not this run's
