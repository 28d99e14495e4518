import numpy as np

from servegen_ml.stats.windows import WindowSeries, full_window_count, window_counts


def test_full_window_count_tolerates_a_last_event_just_before_the_end():
    assert full_window_count(1799.8, 600) == 3
    assert full_window_count(1799.8, 1) == 1799
    assert full_window_count(3536.999, 600) == 5


def test_series_matches_in_memory_counts_and_survives_coarsening():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(100.0, 100.0 + 50_000, 20_000))
    t[0] = 100.0
    s = WindowSeries(1.0, ("count",), 100.0, ladder_s=(10.0, 60.0), max_bins=20_000)
    for part in np.array_split(t, 7):
        s.add(part)
    # 50,000 one-second bins exceed max_bins: the series moved to 10 s windows
    assert s.width_s == 10.0
    for w in (10.0, 60.0, 600.0):
        assert np.array_equal(s.full(t[-1], w)["count"], window_counts(t, w))
