import numpy as np
import pandas as pd

from servegen_ml.compose import merge_streams, segment_multipliers, window_segments
from servegen_ml.compose.rate_control import curve_integral
from servegen_ml.core.spec import RateSpec
from servegen_ml.trace.schema import list_lengths, list_values


def test_window_segments_cut_on_the_grid():
    lo, hi = window_segments(250.0, 1000.0, 600.0)
    np.testing.assert_allclose(lo, [250.0, 600.0, 1200.0])
    np.testing.assert_allclose(hi, [600.0, 1200.0, 1250.0])


def test_curve_integral_is_exact():
    rate = RateSpec.parse("curve:100=10,400=40,500=0")
    t = np.array([0.0, 100.0, 250.0, 400.0, 700.0])
    grid = np.linspace(100, 700, 600001)
    r = np.interp(grid, rate.curve_t_s, rate.curve_rate)
    numeric = np.concatenate([[0.0], np.cumsum(0.5 * (r[1:] + r[:-1]) * np.diff(grid))])
    expected = np.interp(t, grid, numeric) - 10.0 * np.maximum(100.0 - t, 0.0)
    np.testing.assert_allclose(curve_integral(rate, t), expected, atol=1e-3)


def test_segment_multipliers_per_kind():
    lo, hi = np.array([0.0, 600.0]), np.array([600.0, 1200.0])
    natural = np.array([10.0, 20.0])
    np.testing.assert_allclose(segment_multipliers(RateSpec.parse("natural"), lo, hi, natural), [1, 1])
    np.testing.assert_allclose(segment_multipliers(RateSpec.parse("scale:3"), lo, hi, natural), [3, 3])
    np.testing.assert_allclose(segment_multipliers(RateSpec.parse("40"), lo, hi, natural), [4, 2])
    # Mean of the ramp 0 -> 1200 s over each window: 15 and 45 req/s.
    ramp = RateSpec.parse("curve:0=0,1200=60")
    np.testing.assert_allclose(segment_multipliers(ramp, lo, hi, natural), [1.5, 2.25])
    assert segment_multipliers(RateSpec.parse("40"), lo, hi, np.array([0.0, 1.0]))[0] == 0.0


def test_merge_sorts_rows_and_item_lists_together():
    df = merge_streams(
        np.array([3.0, 1.0, 2.0]),
        np.array([0, 1, 0]),
        ["a", "b"],
        {"input_tokens": np.array([30, 10, 20]), "output_tokens": np.array([3, 1, 2])},
        {"image_tokens": (np.array([1, 0, 2]), np.array([300, 200, 201]))},
    )
    assert df["timestamp"].tolist() == [1.0, 2.0, 3.0]
    assert df["client_id"].tolist() == ["b", "a", "a"]
    assert df["input_tokens"].tolist() == [10, 20, 30]
    np.testing.assert_array_equal(list_lengths(df["image_tokens"]), [0, 2, 1])
    np.testing.assert_array_equal(list_values(df["image_tokens"]), [200, 201, 300])
    assert isinstance(df["client_id"].dtype, pd.StringDtype)


def test_window_segments_can_step_inside_windows():
    lo, hi = window_segments(30.0, 200.0, 100.0, step_s=60.0)
    np.testing.assert_allclose(lo, [30.0, 90.0, 100.0, 150.0, 200.0, 210.0])
    np.testing.assert_allclose(hi, [90.0, 100.0, 150.0, 200.0, 210.0, 230.0])
