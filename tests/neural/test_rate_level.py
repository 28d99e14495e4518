"""The rate level: its fit, its unit time (numpy and torch alike), and the exact real-time likelihood."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from servegen_ml.core.spec import DAY_S
from servegen_ml.neural import features as F
from servegen_ml.neural.model.distributions import GapMixture
from servegen_ml.neural.rate_level import (
    PRIOR_EVENTS,
    UnitClock,
    cumulative_table,
    fit_rate_level,
    unit_clock,
    unit_span,
    unit_time,
)
from servegen_ml.neural.sampling.draws import sample_forward_gap


def test_the_fit_keeps_counts_and_gives_idle_bins_a_small_rate():
    rates = np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])  # req/s over bins of 100 s, span 250 s
    level = fit_rate_level(rates, 100.0, 250.0)
    width = np.array([100.0, 100.0, 50.0])
    mean = (100.0 + 100.0) / 250.0
    np.testing.assert_allclose(level[0], (rates[0] * width + PRIOR_EVENTS) / (width + PRIOR_EVENTS / mean))
    assert (level > 0).all() and level[0, 1] < 0.01 < 0.9 < level[0, 0]
    # A silent client gets a flat half-event-per-span rate.
    np.testing.assert_allclose(level[1], (0.0 + PRIOR_EVENTS) / (width + PRIOR_EVENTS * 500.0))


@pytest.mark.parametrize("span_s", [250.0, 1.5 * DAY_S])
def test_unit_time_integrates_the_level_and_wraps_whole_periods(span_s):
    rng = np.random.default_rng(0)
    bin_s = 100.0 if span_s < DAY_S else 3600.0
    n_bins = math.ceil(span_s / bin_s)
    level = rng.uniform(0.1, 3.0, (2, n_bins))
    clock = unit_clock(level, bin_s, span_s)
    # Inside the span: whole bins, then part of the next one.
    for k in range(n_bins):
        x = np.array([k * bin_s + 0.3 * bin_s])
        np.testing.assert_allclose(clock(1, x), level[1, :k].sum() * bin_s + level[1, k] * 0.3 * bin_s)
    # Past the span: positions wrap by whole periods (the span, or a day), each adding its integral.
    period = span_s if span_s < DAY_S else DAY_S
    q = rng.uniform(span_s - period, span_s, 50)
    per_period = clock(0, np.array([span_s]))[0] - clock(0, np.array([span_s - period]))[0]
    for k in (1, 3):
        np.testing.assert_allclose(clock(0, q + k * period), clock(0, q) + k * per_period, rtol=1e-12)
    # torch computes the same, and a span within one bin is rate x length.
    cum = cumulative_table(level, bin_s, span_s)
    x = rng.uniform(0.0, 3 * span_s, 100)
    got = unit_time(
        torch, torch.from_numpy(level), torch.from_numpy(cum), 1, torch.from_numpy(x), bin_s, span_s
    )
    np.testing.assert_allclose(got.numpy(), clock(1, x), rtol=1e-12)
    tiny = unit_span(np, level, cum, 0, np.array([10.0]), np.array([10.0 + 1e-12]), bin_s, span_s)
    np.testing.assert_allclose(tiny, level[0, 0] * ((10.0 + 1e-12) - 10.0), rtol=1e-12)


def T(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _pinned_gap(seed: int) -> GapMixture:
    raw = torch.from_numpy(np.random.default_rng(seed).normal(0.0, 1.5, (1, 1 + 3 * 3)))
    return GapMixture(*F.unit_gap_params(torch, raw, 3), torch.float64)


def test_the_real_time_likelihood_is_the_unit_density_times_the_rate():
    """log P(gap in [g, g + res)) equals the integral of f_u(Lambda(s) - Lambda(t0)) r(s) over the bin."""
    bin_s, span_s = 10.0, 40.0
    level = np.array([[0.3, 2.5, 0.05, 1.0]])
    clock = UnitClock(
        torch,
        torch.from_numpy(level),
        torch.from_numpy(cumulative_table(level, bin_s, span_s)),
        bin_s,
        span_s,
    )
    dist = _pinned_gap(1)
    p0 = float(torch.sigmoid(dist.zero_logit))
    w = torch.softmax(dist.comp_logits, -1).numpy()[0]
    mu, sd = dist.loc.numpy()[0], np.exp(dist.log_scale.numpy()[0])

    def density(u):  # of the continuous part, in unit time
        return (1 - p0) * sum(w[k] * stats.lognorm.pdf(u, sd[k], scale=np.exp(mu[k])) for k in range(3))

    def rate(s):
        return level[0, min(int(s // bin_s), 3)]

    t0 = 3.0

    def unit_gap(s):
        return float(clock(0, T(s))) - float(clock(0, T(t0)))

    # Bins of 1 ms and of seconds, inside one rate bin and across rate-bin edges.
    for g, res in ((2.0, 1e-3), (6.5, 5.0), (9.9995, 1e-3), (14.0, 20.0)):
        lower = clock.span(0, T(t0), T(t0 + g)).reshape(1)
        width = clock.span(0, T(t0 + g), T(t0 + g + res)).reshape(1)
        got = float(dist.log_prob_interval(lower, width, torch.tensor([True])))
        edges = (
            [t0 + g]
            + [e for e in np.arange(0.0, span_s, bin_s) if t0 + g < e < t0 + g + res]
            + [t0 + g + res]
        )
        want = sum(
            integrate.quad(lambda s: density(unit_gap(s)) * rate(s), a, b, epsabs=0, epsrel=1e-10)[0]
            for a, b in zip(edges[:-1], edges[1:])
        )
        assert got == pytest.approx(math.log(want), abs=1e-6), (g, res)
    # The survival is 1 - P(gap < s), the point mass included.
    s_u = clock.span(0, T(t0), T(t0 + 20.0)).reshape(1)
    below = p0 + integrate.quad(density, 0.0, float(s_u), limit=200)[0]
    assert float(dist.log_survival(s_u).exp()) == pytest.approx(1.0 - below, abs=1e-7)


def test_the_pinned_mean_is_one_for_numpy_and_torch_alike():
    raw = np.random.default_rng(2).normal(0.0, 3.0, (50, 1 + 3 * 4))
    zero, comp, loc, log_scale = F.unit_gap_params(np, raw, 4)
    t = F.unit_gap_params(torch, torch.from_numpy(raw), 4)
    for a, b in zip((zero, comp, loc, log_scale), t):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-12, atol=1e-12)
    w = np.exp(comp - comp.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    sigma = np.exp(log_scale)
    assert (sigma >= F.GAP_SIGMA_MIN).all() and (sigma <= F.GAP_SIGMA_MAX).all()
    mean = (w * np.exp(loc + sigma**2 / 2)).sum(-1) / (1 + np.exp(zero))
    np.testing.assert_allclose(mean, 1.0, rtol=1e-12)


def test_a_row_start_draws_the_forward_recurrence_time():
    # Gaps of mean 1 (log-normal, sigma 1.5): seen from an arbitrary moment the wait has CDF
    # G(x) = int_0^x P(gap > t) dt = x (1 - Phi(z)) + Phi(z - sigma), z = (log x - mu) / sigma.
    sigma = 1.5
    mu = -0.5 * sigma**2
    n = 20_000
    comp, loc, log_scale = np.zeros((n, 1)), np.full((n, 1), mu), np.full((n, 1), math.log(sigma))
    wait = sample_forward_gap(comp, loc, log_scale, np.random.default_rng(0))

    def cdf(x):
        z = (np.log(np.maximum(x, 1e-300)) - mu) / sigma
        return x * stats.norm.sf(z) + stats.norm.cdf(z - sigma)

    assert stats.kstest(wait, cdf).pvalue > 0.01
    # The ordinary gap would be far shorter on average (1 against E[gap^2] / 2 = exp(sigma^2) / 2).
    assert abs(wait.mean() / (math.exp(sigma**2) / 2) - 1) < 0.15
