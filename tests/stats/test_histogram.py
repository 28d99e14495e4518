import numpy as np
import pytest

from servegen_ml.stats.histogram import IntHistogram, LogValueHistogram, UnitHistogram
from servegen_ml.stats.reasoning import bimodality_coefficient
from servegen_ml.stats.sampling import Reservoir


def test_int_histogram_is_exact_below_exact_max_and_within_a_bin_above():
    rng = np.random.default_rng(0)
    v = np.round(np.exp(rng.normal(6, 1.5, 50_000))).astype(np.int64)
    h = IntHistogram(exact_max=2048, bins_per_octave=64)
    h.add(v)
    qs = np.array([0.1, 0.5, 0.9, 0.99, 0.999])
    want = np.quantile(v, qs, method="inverted_cdf")
    got = h.quantile(qs)
    below = want < 2048
    assert np.array_equal(got[below], want[below])
    assert np.all(np.abs(got[~below] / want[~below] - 1) <= 2 ** (1 / 64) - 1 + 1e-9)
    assert h.mean == pytest.approx(v.mean(), rel=1e-12)
    assert (h.min, h.max, h.n) == (v.min(), v.max(), len(v))


def test_int_histogram_merge_equals_one_pass():
    rng = np.random.default_rng(1)
    v = rng.integers(0, 10**6, 5000)
    whole, a, b = IntHistogram(), IntHistogram(), IntHistogram()
    whole.add(v)
    a.add(v[:1234])
    b.add(v[1234:])
    a.merge(b)
    assert np.array_equal(a.counts, whole.counts) and a.total == whole.total and a.max == whole.max


def test_int_histogram_rejects_negative_values():
    with pytest.raises(ValueError):
        IntHistogram().add(np.array([3, -1]))


def test_unit_histogram_moments_match_the_sample_formula():
    rng = np.random.default_rng(2)
    x = np.where(rng.random(20_000) < 0.3, 0.0, rng.beta(5, 2, 20_000))
    h = UnitHistogram()
    h.add(x)
    s = h.summary()
    assert s["bimodality_coefficient"] == pytest.approx(bimodality_coefficient(x), rel=1e-9)
    assert s["share_zero"] == pytest.approx(np.mean(x == 0))
    assert s["mean"] == pytest.approx(x.mean())


def test_log_value_histogram_quantiles_are_within_half_a_bin():
    rng = np.random.default_rng(3)
    x = np.exp(rng.normal(0, 1, 20_000))
    h = LogValueHistogram(bins_per_decade=100)
    h.add(x)
    got = h.quantile([0.1, 0.5, 0.9])
    want = np.quantile(x, [0.1, 0.5, 0.9])
    assert np.all(np.abs(np.log10(got / want)) <= 0.01)


def test_reservoir_does_not_depend_on_chunking_and_is_uniform():
    x = np.arange(100_000)
    one = Reservoir(1000, np.random.default_rng(4))
    one.add(x=x)
    many = Reservoir(1000, np.random.default_rng(4))
    for part in np.array_split(x, 37):
        many.add(x=part)
    assert np.array_equal(one.sample()["x"], many.sample()["x"])
    s = one.sample()["x"]
    assert len(np.unique(s)) == 1000 and np.all(np.diff(s) > 0)  # no repeats, arrival order
    assert abs(s.mean() - x.mean()) < 4 * x.std() / np.sqrt(1000)
