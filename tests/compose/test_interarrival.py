import numpy as np
import pytest
from scipy import integrate, stats

from servegen_ml.compose import interarrival as ia

CASES = [(ia.GAMMA, 0.3, 2.0), (ia.GAMMA, 4.0, 0.5), (ia.WEIBULL, 0.5, 1.5), (ia.WEIBULL, 2.0, 0.7)]


def _scipy(family, shape, scale):
    return stats.gamma(shape, scale=scale) if family == ia.GAMMA else stats.weibull_min(shape, scale=scale)


def _arr(*v):
    return [np.array([x]) for x in v]


@pytest.mark.parametrize("family,shape,scale", CASES)
def test_interval_and_survival_match_scipy(family, shape, scale):
    d = _scipy(family, shape, scale)
    f, k, s = _arr(family, shape, scale)
    for a, b in [(0.0, 1e-3), (0.3, 0.4), (5.0, 5.001)]:
        exact = d.sf(a) - d.sf(b) if a > d.median() else d.cdf(b) - d.cdf(a)
        np.testing.assert_allclose(np.exp(ia.log_interval(f, k, s, a, b)), exact, rtol=1e-5)
    np.testing.assert_allclose(ia.log_sf(f, k, s, 3.0), d.logsf(3.0), rtol=1e-9)
    # Far tails stay finite (scipy's gamma survival underflows to -inf here).
    assert np.isfinite(ia.log_sf(f, k, s, 5000.0)).all()
    assert np.isfinite(ia.log_interval(f, k, s, 5000.0, 5000.001)).all()


@pytest.mark.parametrize("family,shape,scale", CASES)
def test_equilibrium_distribution_matches_integral_and_sampler(family, shape, scale):
    d = _scipy(family, shape, scale)
    f, k, s = _arr(family, shape, scale)

    def fe(x):  # forward recurrence CDF: integral of S(u) du / mean
        return integrate.quad(d.sf, 0, x, limit=200)[0] / d.mean()

    np.testing.assert_allclose(
        np.exp(ia.log_interval_equilibrium(f, k, s, 0.3, 0.4)), fe(0.4) - fe(0.3), rtol=1e-6
    )
    np.testing.assert_allclose(
        np.exp(ia.log_sf_equilibrium(f, k, s, 2.0)), 1 - fe(2.0), rtol=1e-6, atol=1e-12
    )
    n = 100_000
    x = ia.sample_forward_recurrence(
        np.full(n, family, np.int8), np.full(n, shape), np.full(n, scale), np.random.default_rng(0)
    )
    for q in (0.2, 1.0, 2.0):
        assert abs(np.mean(x < q) - fe(q)) < 0.006


@pytest.mark.parametrize(
    "family,shape", [(ia.GAMMA, 0.25), (ia.GAMMA, 3.0), (ia.WEIBULL, 0.6), (ia.WEIBULL, 1.7)]
)
def test_scale_for_rate_and_cv(family, shape):
    f, k = _arr(family, shape)
    scale = ia.scale_for_rate(f, k, np.array([4.0]))
    g = ia.sample_gaps(
        np.full(200_000, family, np.int8),
        np.full(200_000, shape),
        np.full(200_000, scale[0]),
        np.random.default_rng(1),
    )
    assert g.mean() == pytest.approx(0.25, rel=0.02)
    assert g.std() / g.mean() == pytest.approx(ia.cv_of(f, k)[0], rel=0.05)


def test_mle_matches_scipy_and_picks_the_right_family():
    rng = np.random.default_rng(0)
    samples = [
        rng.gamma(0.5, 2.0, 5000),
        rng.gamma(3.0, 1.0, 5000),
        1.5 * rng.weibull(0.6, 5000),
        rng.weibull(2.5, 5000),
    ]
    group = np.repeat(np.arange(4), 5000)
    family, shape, scale, cv = ia.fit_renewal(np.concatenate(samples), group, 4)
    assert list(family) == [ia.GAMMA, ia.GAMMA, ia.WEIBULL, ia.WEIBULL]
    for i, x in enumerate(samples):
        dist = stats.gamma if family[i] == ia.GAMMA else stats.weibull_min
        k_ref, _, s_ref = dist.fit(x, floc=0)
        assert shape[i] == pytest.approx(k_ref, rel=1e-4)
        assert scale[i] == pytest.approx(s_ref, rel=1e-4)
        assert cv[i] == pytest.approx(x.std() / x.mean(), rel=1e-9)


def test_groups_with_one_gap_are_not_fitted():
    family, shape, scale, cv = ia.fit_renewal(np.array([1.0, 2.0, 0.5]), np.array([0, 0, 1]), 2)
    assert np.isfinite(shape[0]) and np.isnan(shape[1])
