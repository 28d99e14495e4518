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
