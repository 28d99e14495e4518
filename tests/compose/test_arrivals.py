import numpy as np
import pytest

from servegen_ml.compose import interarrival as ia
from servegen_ml.compose import renewal_arrivals


def _segments(n, length_s, family, shape, rate):
    start = np.arange(n) * 1000.0
    return start, start + length_s, np.full(n, family, np.int8), np.full(n, shape), np.full(n, rate)


@pytest.mark.parametrize("family,shape", [(ia.GAMMA, 0.1), (ia.WEIBULL, 0.4)])
def test_short_segments_keep_the_rate_thanks_to_the_stationary_start(family, shape):
    # Segments much shorter than the bursts: a naive restart (first gap ~ F) would under-count.
    start, end, f, k, r = _segments(40_000, 2.0, family, shape, 1.0)
    owner, t = renewal_arrivals(start, end, f, k, r, np.random.default_rng(0))
    assert len(t) / 40_000 == pytest.approx(2.0, rel=0.05)
    assert ((t >= start[owner]) & (t < end[owner])).all()


def test_counts_keep_their_natural_spread():
    cv = 2.0
    start, end, f, k, r = _segments(1000, 600.0, ia.GAMMA, 1 / cv**2, 2.0)
    owner, _ = renewal_arrivals(start, end, f, k, r, np.random.default_rng(1))
    counts = np.bincount(owner, minlength=1000)
    assert counts.mean() == pytest.approx(1200, rel=0.02)
    # A renewal process has Var N ~ CV^2 * E N over long windows (not ~0 as with forced counts).
    assert counts.var() / counts.mean() == pytest.approx(cv**2, rel=0.2)


def test_grouped_in_time_order_and_reproducible():
    start, end, f, k, r = _segments(50, 100.0, ia.WEIBULL, 0.5, 3.0)
    a = renewal_arrivals(start, end, f, k, r, np.random.default_rng(5))
    b = renewal_arrivals(start, end, f, k, r, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    owner, t = a
    assert (np.diff(owner) >= 0).all()
    assert (np.diff(t)[np.diff(owner) == 0] >= 0).all()


def test_inactive_segments_produce_nothing():
    owner, t = renewal_arrivals(
        np.array([0.0, 0.0]),
        np.array([10.0, 10.0]),
        np.zeros(2, np.int8),
        np.ones(2),
        np.array([0.0, 5.0]),
        np.random.default_rng(0),
    )
    assert set(owner.tolist()) == {1}
