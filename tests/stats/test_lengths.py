import numpy as np
import pytest

from servegen_ml.stats.lengths import LengthAccumulator, hour_of_day, hourly_summary, quantiles


def test_hour_of_day_wraps_days():
    assert list(hour_of_day(np.array([0.0, 3599.9, 3600.0, 86400.0 + 7200]))) == [0, 0, 1, 2]


def test_planted_hourly_shift_is_visible_streaming_and_in_memory():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 86400, 48_000))
    hours = hour_of_day(t)
    v = np.round(np.exp(rng.normal(np.where(hours >= 12, 7.0, 5.0), 0.5))).astype(np.int64)
    acc = LengthAccumulator(("input_tokens",))
    for part in np.array_split(np.arange(len(t)), 5):
        acc.add(t[part], input_tokens=v[part])
    res = acc.result()["input_tokens"]
    by_hour = {h["hour"]: h for h in res["hourly"]}
    assert by_hour[15]["p50"] > 5 * by_hour[3]["p50"]
    mem = hourly_summary(t, v).set_index("hour")
    assert by_hour[3]["p50"] == mem.loc[3, "p50"]  # below 2048: exact
    assert by_hour[15]["mean"] == pytest.approx(mem.loc[15, "mean"])
    assert res["p50"] == quantiles(v)["p50"]
