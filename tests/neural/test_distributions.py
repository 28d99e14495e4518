"""Each head distribution's log_prob against scipy / direct summation, and its sampler against the PMF."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import expit, logit

from servegen_ml.neural.model.distributions import CountMixture, GapMixture, RatioMixture, log_normal_interval
from servegen_ml.neural.sampling.draws import RATIO_SPIKE_SCALE

RES = 1e-3


def gap_dist():
    # two rows: different zero mass and mixtures (log-seconds)
    return GapMixture(
        zero_logit=torch.tensor([-1.0, -4.0], dtype=torch.float64),
        comp_logits=torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=torch.float64),
        loc=torch.tensor([[-2.0, 1.0], [0.5, 3.0]], dtype=torch.float64),
        log_scale=torch.tensor([[0.0, -0.5], [0.3, -1.0]], dtype=torch.float64),
    )


def gap_cdf_scipy(d, row, x):
    w = torch.softmax(d.comp_logits[row], -1).numpy()
    mu, sd = d.loc[row].numpy(), np.exp(d.log_scale[row].numpy())
    return sum(w[k] * stats.norm.cdf((np.log(x) - mu[k]) / sd[k]) for k in range(len(w)))


def test_log_normal_interval_matches_high_precision():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    a = torch.tensor([-3.0, 0.2, 8.0, -40.0, 30.0, 1.0, -0.5], dtype=torch.float64)
    w = torch.tensor([0.5, 1e-7, 0.1, 2.0, 1e-3, 50.0, 1e-4], dtype=torch.float64)
    got = log_normal_interval(a, w).numpy()
    for i in range(len(a)):
        lo, hi = mpmath.mpf(float(a[i])), mpmath.mpf(float(a[i])) + mpmath.mpf(float(w[i]))
        mass = mpmath.ncdf(-lo) - mpmath.ncdf(-hi) if lo > 0 else mpmath.ncdf(hi) - mpmath.ncdf(lo)
        want = float(mpmath.log(mass))
        assert got[i] == pytest.approx(want, rel=1e-7)


def test_gap_log_prob_matches_scipy():
    d = gap_dist()
    for g in (0.01, 0.5, 3.0, 40.0):
        lp = d.log_prob(torch.tensor([g, g], dtype=torch.float64), RES).numpy()
        for row in range(2):
            p1 = expit(-float(d.zero_logit[row]))
            want = np.log(p1 * (gap_cdf_scipy(d, row, g + RES) - gap_cdf_scipy(d, row, g)))
            assert lp[row] == pytest.approx(want, rel=1e-5)


def test_gap_zero_point_mass_and_survival():
    d = gap_dist()
    lp0 = d.log_prob(torch.zeros(2, dtype=torch.float64), RES).numpy()
    for row in range(2):
        p0 = expit(float(d.zero_logit[row]))
        assert lp0[row] == pytest.approx(np.log(p0 + (1 - p0) * gap_cdf_scipy(d, row, RES)), rel=1e-9)
    s = torch.tensor([2.0, 7.0], dtype=torch.float64)
    surv = d.log_survival(s).numpy()
    for row in range(2):
        p1 = expit(-float(d.zero_logit[row]))
        assert surv[row] == pytest.approx(np.log(p1 * (1 - gap_cdf_scipy(d, row, float(s[row])))), rel=1e-9)
    # P(gap >= 0) = 1
    assert np.allclose(d.log_survival(torch.zeros(2, dtype=torch.float64)).numpy(), 0.0)


def test_gap_sample_moments_match_analytic():
    d = gap_dist()
    rng = np.random.default_rng(0)
    n = 200_000
    rep = GapMixture(
        *(x[:1].expand(n, *x.shape[1:]) for x in (d.zero_logit, d.comp_logits, d.loc, d.log_scale))
    )
    g = rep.sample(rng)
    p0 = expit(float(d.zero_logit[0]))
    w = torch.softmax(d.comp_logits[0], -1).numpy()
    mu, sd = d.loc[0].numpy(), np.exp(d.log_scale[0].numpy())
    mean = (1 - p0) * np.sum(w * np.exp(mu + sd**2 / 2))
    assert np.mean(g == 0) == pytest.approx(p0, abs=0.005)
    assert g.mean() == pytest.approx(mean, rel=0.02)
    # the median of log-gaps of the continuous part vs the mixture CDF
    q = np.quantile(g[g > 0], 0.5)
    assert gap_cdf_scipy(d, 0, q) == pytest.approx(0.5, abs=0.01)


def count_dist(spikes=(0, 100, 512)):
    v = len(spikes)
    return CountMixture(
        spike_values=torch.tensor(spikes, dtype=torch.int64),
        logits=torch.tensor([[0.0] * v + [1.5]], dtype=torch.float64),
        comp_logits=torch.tensor([[0.0, 0.5]], dtype=torch.float64),
        loc=torch.tensor([[3.0, 6.0]], dtype=torch.float64),
        log_scale=torch.tensor([[-0.5, 0.2]], dtype=torch.float64),
    )


def test_count_log_prob_matches_scipy_and_sums_to_one():
    d = count_dist()
    n = torch.arange(0, 200_000)
    lp = d.log_prob(n.unsqueeze(0)).numpy()[0]
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-4)  # mass beyond 2e5 tokens is tiny
    pi = torch.softmax(d.logits[0], -1).numpy()
    w = torch.softmax(d.comp_logits[0], -1).numpy()
    mu, sd = d.loc[0].numpy(), np.exp(d.log_scale[0].numpy())

    def cont(k):
        lo = -np.inf if k == 0 else np.log(k + 0.5)
        return sum(
            w[j] * (stats.norm.cdf((np.log(k + 1.5) - mu[j]) / sd[j]) - stats.norm.cdf((lo - mu[j]) / sd[j]))
            for j in range(2)
        )

    for k in (0, 1, 7, 100, 101, 512, 3000):
        spike = pi[[0, 100, 512].index(k)] if k in (0, 100, 512) else 0.0
        assert lp[k] == pytest.approx(np.log(spike + pi[-1] * cont(k)), rel=1e-6)


def test_float32_counts_in_the_millions_keep_their_mass():
    # Their bins [log(n + 0.5), log(n + 1.5)) are narrower than float32's spacing of the logs: taken
    # as a difference of logs the width was 0 and log P -inf (a 10 M-row trace's 1.96 M-token prompt
    # turned the whole training NaN).
    d64 = count_dist()
    d32 = CountMixture(
        d64.spike_values,
        *(t.float() for t in (d64.logits, d64.comp_logits, d64.loc, d64.log_scale)),
        dtype=torch.float32,
    )
    n = torch.tensor([[1_000_000, 1_961_311, 9_000_000, 16_000_000]])
    lp32, lp64 = d32.log_prob(n).numpy()[0], d64.log_prob(n).numpy()[0]
    assert np.isfinite(lp32).all()
    np.testing.assert_allclose(lp32, lp64, rtol=1e-4)


def test_float32_ratios_of_totals_in_the_millions_keep_their_mass():
    # Logits of (k -/+ 0.5) / n taken from the ratios lost the bin in float32 (n = 10 M, k near n: -inf).
    args = ([[0.0, 0.0, 1.0]], [[0.0, 0.0]], [[0.0, 2.0]], [[0.0, 0.5]])
    d32 = RatioMixture(*(torch.tensor(a) for a in args), dtype=torch.float32)
    d64 = RatioMixture(*(torch.tensor(a, dtype=torch.float64) for a in args))
    k = torch.tensor([[5_000_000, 9_999_990, 2_999_000, 1, 0, 3]])
    n = torch.tensor([[10_000_000, 10_000_000, 3_000_000, 1_000_000, 5, 7]])
    lp32, lp64 = d32.log_prob(k, n).numpy()[0], d64.log_prob(k, n).numpy()[0]
    assert np.isfinite(lp32).all()
    np.testing.assert_allclose(lp32, lp64, rtol=1e-4)


def test_count_sampler_matches_pmf():
    d = count_dist()
    n = 200_000
    rep = CountMixture(
        d.spike_values, *(x.expand(n, -1) for x in (d.logits, d.comp_logits, d.loc, d.log_scale))
    )
    s = rep.sample(np.random.default_rng(1), max_count=10**7)
    for k in (0, 100, 512, 20):
        p = math.exp(float(d.log_prob(torch.tensor([k]))[0]))
        assert np.mean(s == k) == pytest.approx(p, abs=4 * math.sqrt(p / n) + 1e-4)
    # a coarse histogram check over log bins
    edges = np.array([0, 5, 20, 50, 200, 1000, 5000, 10**7])
    lp = np.exp(d.log_prob(torch.arange(0, 10**6).unsqueeze(0)).numpy()[0])
    for lo, hi in itertools.pairwise(edges):
        want = lp[lo : min(hi, 10**6)].sum()
        assert np.mean((s >= lo) & (s < hi)) == pytest.approx(want, abs=0.005)


def ratio_dist():
    return RatioMixture(
        logits=torch.tensor([[-1.0, -2.0, 1.0]], dtype=torch.float64),
        comp_logits=torch.tensor([[0.0, 0.3]], dtype=torch.float64),
        loc=torch.tensor([[1.5, -0.5]], dtype=torch.float64),
        log_scale=torch.tensor([[-0.7, 0.0]], dtype=torch.float64),
    )


def spiked_ratio_dist():
    """Spike ratios 0.0333, 0.5, 0.5001 (two land on the same part for small totals) and 1."""
    d = ratio_dist()
    logits = torch.tensor([[-1.0, -2.0, 1.0, 0.5, -0.3, 0.2, -1.0]], dtype=torch.float64)
    keys = torch.tensor([333, 5000, 5001, RATIO_SPIKE_SCALE])
    return RatioMixture(logits, d.comp_logits, d.loc, d.log_scale, spike_keys=keys)


@pytest.mark.parametrize("total", [1, 2, 7, 1000, 30000])
def test_ratio_spikes_put_their_mass_on_the_part_they_round_to(total):
    d, plain = spiked_ratio_dist(), ratio_dist()
    k = torch.arange(0, total + 1).unsqueeze(0)
    lp = d.log_prob(k, torch.full_like(k, total)).numpy()[0]
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-9)
    pi = torch.softmax(d.logits[0], -1).numpy()
    # Besides its spikes it is the plain mixture (same first three logits) scaled by their weight.
    plain_lp = plain.log_prob(k, torch.full_like(k, total)).numpy()[0]
    spike_mass = np.zeros(total + 1)
    for key, p in zip([333, 5000, 5001, RATIO_SPIKE_SCALE], pi[3:], strict=True):
        spike_mass[int(np.floor(key / RATIO_SPIKE_SCALE * total + 0.5))] += p
    np.testing.assert_allclose(
        np.exp(lp), np.exp(plain_lp) * pi[:3].sum() + spike_mass, rtol=1e-9, atol=1e-15
    )


@pytest.mark.parametrize("total", [1, 2, 7, 1000, 30000])
def test_ratio_log_prob_sums_to_one_and_matches_scipy(total):
    d = ratio_dist()
    k = torch.arange(0, total + 1).unsqueeze(0)
    lp = d.log_prob(k, torch.full_like(k, total)).numpy()[0]
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-9)
    pi = torch.softmax(d.logits[0], -1).numpy()
    w = torch.softmax(d.comp_logits[0], -1).numpy()
    mu, sd = d.loc[0].numpy(), np.exp(d.log_scale[0].numpy())
    j = total // 3
    lo, hi = logit(max((j - 0.5) / total, 0)), logit(min((j + 0.5) / total, 1))
    cont = sum(
        w[c] * (stats.norm.cdf((hi - mu[c]) / sd[c]) - stats.norm.cdf((lo - mu[c]) / sd[c])) for c in range(2)
    )
    want = pi[2] * cont + (pi[0] if j == 0 else 0) + (pi[1] if j == total else 0)
    assert lp[j] == pytest.approx(np.log(want), rel=1e-5)


def test_ratio_zero_total_and_sampler():
    d = ratio_dist()
    assert float(d.log_prob(torch.tensor([[0]]), torch.tensor([[0]]))[0, 0]) == 0.0
    n, total = 100_000, 50
    rep = RatioMixture(*(x.expand(n, -1) for x in (d.logits, d.comp_logits, d.loc, d.log_scale)))
    s = rep.sample(np.full(n, total), np.random.default_rng(2))
    lp = np.exp(
        d.log_prob(torch.arange(total + 1).unsqueeze(0), torch.full((1, total + 1), total)).numpy()[0]
    )
    freq = np.bincount(s, minlength=total + 1) / n
    assert np.abs(freq - lp).max() < 0.006
    assert 0.5 * np.abs(freq - lp).sum() < 0.02


@pytest.mark.parametrize("total", [3, 50, 20000])
def test_ratio_sampler_draws_spikes_as_scored(total):
    d = spiked_ratio_dist()
    n = 100_000
    rep = RatioMixture(
        *(x.expand(n, -1) for x in (d.logits, d.comp_logits, d.loc, d.log_scale)), spike_keys=d.spike_keys
    )
    s = rep.sample(np.full(n, total), np.random.default_rng(3))
    assert s.min() >= 0 and s.max() <= total
    parts = np.unique(np.floor(np.array([333, 5000, 5001]) / RATIO_SPIKE_SCALE * total + 0.5).astype(int))
    lp = d.log_prob(torch.from_numpy(parts)[None], torch.full((1, len(parts)), total)).numpy()[0]
    for part, p in zip(parts, np.exp(lp), strict=True):
        assert np.mean(s == part) == pytest.approx(p, abs=4 * math.sqrt(p / n) + 1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_finite_at_extremes(dtype):
    # one sane component and one far-off, very narrow one (its terms underflow)
    params = [
        torch.tensor(v, dtype=torch.float32, requires_grad=True)
        for v in ([[0.0, 0.0]], [[-9.0, 9.0]], [[2.0, -9.0]])
    ]
    logits = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    zl = torch.tensor([0.0], requires_grad=True)
    gap = GapMixture(zl, *params, dtype=dtype)
    cnt = CountMixture(torch.tensor([1, 5]), logits, *params, dtype=dtype)
    rat = RatioMixture(logits, *params, dtype=dtype)
    total = (
        gap.log_prob(torch.tensor([0.0]), RES).sum()
        + gap.log_prob(torch.tensor([1e6]), RES).sum()
        + gap.log_survival(torch.tensor([1e-9])).sum()
        + cnt.log_prob(torch.tensor([[0, 5, 10**6]])).sum()
        + rat.log_prob(torch.tensor([[0, 3, 10]]), torch.tensor([[10, 10, 10]])).sum()
    )
    total.backward()
    assert torch.isfinite(total)
    for p in params + [logits, zl]:
        assert torch.isfinite(p.grad).all()


def test_count_floor_mixes_in_a_broad_normal():
    d = count_dist()
    floored = CountMixture(
        d.spike_values,
        d.logits,
        d.comp_logits,
        d.loc,
        d.log_scale,
        floor=0.01,
        base_loc=4.0,
        base_log_scale=0.5,
    )
    n = torch.arange(0, 200_000).unsqueeze(0)
    lp, lp0 = floored.log_prob(n).numpy()[0], d.log_prob(n).numpy()[0]
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-4)
    base = stats.norm.cdf((np.log(n[0].numpy() + 1.5) - 4.0) / np.exp(0.5)) - np.where(
        n[0].numpy() > 0, stats.norm.cdf((np.log(n[0].numpy() + 0.5) - 4.0) / np.exp(0.5)), 0.0
    )
    np.testing.assert_allclose(np.exp(lp[:3000]), 0.99 * np.exp(lp0[:3000]) + 0.01 * base[:3000], rtol=1e-6)
    m = 200_000
    rep = CountMixture(
        d.spike_values,
        *(x.expand(m, -1) for x in (d.logits, d.comp_logits, d.loc, d.log_scale)),
        floor=0.01,
        base_loc=4.0,
        base_log_scale=0.5,
    )
    s = rep.sample(np.random.default_rng(5), max_count=10**7)
    for k in (0, 100, 30):
        p = math.exp(float(floored.log_prob(torch.tensor([k]))[0]))
        assert np.mean(s == k) == pytest.approx(p, abs=4 * math.sqrt(p / m) + 1e-4)


@pytest.mark.parametrize("k", [5, 63, 64, 200, 257])
def test_categorical_draws_match_softmax_and_skip_zero_weights(k):
    # Both draw paths (one cumulative sum below 4 groups, group then member above) against the
    # softmax by a chi-square test; categories with probability 0 (logit -inf) are never drawn.
    from servegen_ml.neural.sampling.draws import sample_categorical

    rng = np.random.default_rng(k)
    logits = (rng.standard_normal((3, k)) * 2).astype(np.float32)
    logits[:, ::7] = -np.inf
    n = 60_000
    draws = sample_categorical(np.repeat(logits, n, axis=0), np.random.default_rng(1)).reshape(3, n)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    assert not np.isin(draws, np.arange(0, k, 7)).any()
    assert draws.max() < k
    for row in range(3):
        counts = np.bincount(draws[row], minlength=k)
        expected = p[row] * n
        ok = expected >= 10
        chi2 = ((counts[ok] - expected[ok]) ** 2 / expected[ok]).sum()
        assert stats.chi2.sf(chi2, ok.sum() - 1) > 1e-4, (row, chi2, ok.sum())
        assert counts[~ok].sum() < 3 * max(expected[~ok].sum(), 3)


@pytest.mark.parametrize("k", [12, 257])
def test_items_drawn_from_their_events_row_equal_draws_from_repeated_rows(k):
    # An event's items share its distribution: drawing them with owner= (the row computed once)
    # gives exactly what drawing from the row repeated per item gives, the same uniforms in order.
    from servegen_ml.neural.sampling.draws import sample_count

    rng = np.random.default_rng(k)
    b = 50
    counts = rng.integers(0, 4, b)
    owner = np.repeat(np.arange(b), counts)
    spikes = np.arange(10, 10 + k - 1)
    params = (
        (rng.standard_normal((b, k)) * 2).astype(np.float32),
        rng.standard_normal((b, 6)),
        rng.standard_normal((b, 6)) + 5.0,
        rng.standard_normal((b, 6)) * 0.3 - 1.0,
    )
    floor = (0.05, 5.0, 0.5)
    shared = sample_count(spikes, *params, 10**6, np.random.default_rng(3), floor, owner)
    repeated = sample_count(spikes, *(x[owner] for x in params), 10**6, np.random.default_rng(3), floor)
    assert len(shared) == counts.sum()
    np.testing.assert_array_equal(shared, repeated)
