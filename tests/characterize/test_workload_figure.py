"""The figure of ``generate plot=true``: rate series and the PNG itself."""

from __future__ import annotations

import numpy as np

from servegen_ml.characterize.workload_figure import (
    rate_series,
    rate_window_s,
    workload_figure,
)
from tests.factories import synthetic_trace


def test_window_grows_with_the_duration():
    assert rate_window_s(600.0) == 10.0
    assert rate_window_s(3600.0) == 60.0
    assert rate_window_s(86_400.0) == 600.0
    assert rate_window_s(5.0) == 1.0


def test_rate_series_counts_per_second_and_divides_a_short_last_window():
    t = np.array([0.5, 1.0, 59.0, 61.0, 95.0])
    mid, rate = rate_series(t, 100.0, 60.0)
    assert mid.tolist() == [30.0, 90.0]
    assert rate.tolist() == [3 / 60, 2 / 40]


def test_figure_is_a_png(tmp_path):
    trace = synthetic_trace(seed=0, duration_s=600.0, n_clients=2, reasoning=True)
    path = workload_figure(trace, 600.0, tmp_path / "w.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
