"""Gamma and Weibull inter-arrival distributions, vectorized over per-element parameters.

A client's stream in one window is a stationary renewal process described by
``(family, shape, rate)``: the mean gap is ``1 / rate`` and the shape sets the
burstiness (CV). The scale follows from both (:func:`scale_for_rate`), so
multiplying the rate keeps the CV.

Stationarity matters at window edges: the first arrival after any time point
is distributed as the *forward recurrence time* (equilibrium distribution,
density ``S(x) / mean``), sampled exactly here for both families and used the
same way by the likelihood.

Times are in seconds; every function takes numpy arrays of equal length (or
broadcastable scalars) and returns arrays.
"""

from __future__ import annotations

import numpy as np
from scipy import special

GAMMA, WEIBULL = 0, 1
FAMILIES = ("Gamma", "Weibull")
# Shapes outside these bounds overflow Gamma(1 + 1/k) or are numerically deterministic.
SHAPE_BOUNDS = {GAMMA: (1e-3, 1e5), WEIBULL: (0.02, 20.0)}
# Probabilities below this are computed from densities instead of CDF differences.
_TINY = 1e-280


def family_code(names) -> np.ndarray:
    """'Gamma'/'Weibull' strings -> codes (anything else is an error)."""
    names = np.asarray(names, dtype=object)
    codes = np.full(len(names), -1, dtype=np.int8)
    for code, name in enumerate(FAMILIES):
        codes[names == name] = code
    if (codes < 0).any():
        bad = sorted({str(x) for x in names[codes < 0]})[:5]
        raise ValueError(f"unknown inter-arrival family {bad}; expected one of {FAMILIES}")
    return codes


def clip_shape(family: np.ndarray, shape: np.ndarray) -> np.ndarray:
    lo = np.where(family == WEIBULL, SHAPE_BOUNDS[WEIBULL][0], SHAPE_BOUNDS[GAMMA][0])
    hi = np.where(family == WEIBULL, SHAPE_BOUNDS[WEIBULL][1], SHAPE_BOUNDS[GAMMA][1])
    return np.clip(np.asarray(shape, dtype=np.float64), lo, hi)


def _mean_over_scale(family, shape):
    """mean gap / scale: k for Gamma, Gamma(1 + 1/k) for Weibull."""
    return np.where(family == WEIBULL, np.exp(special.gammaln(1.0 + 1.0 / shape)), shape)


def scale_for_rate(family, shape, rate) -> np.ndarray:
    """The scale (s) that gives mean gap ``1 / rate`` at this shape."""
    return 1.0 / (np.asarray(rate, dtype=np.float64) * _mean_over_scale(family, shape))


def cv_of(family, shape) -> np.ndarray:
    """Coefficient of variation of the gaps implied by the shape."""
    shape = np.asarray(shape, dtype=np.float64)
    g1 = special.gammaln(1.0 + 1.0 / shape)
    g2 = special.gammaln(1.0 + 2.0 / shape)
    weibull = np.sqrt(np.maximum(np.expm1(g2 - 2.0 * g1), 0.0))
    return np.where(family == WEIBULL, weibull, 1.0 / np.sqrt(shape))


# ---------------------------------------------------------------- sampling


def sample_gaps(family, shape, scale, rng: np.random.Generator) -> np.ndarray:
    """One gap per element."""
    out = np.empty(len(family))
    g = family == GAMMA
    out[g] = rng.gamma(shape[g], scale[g])
    w = ~g
    out[w] = scale[w] * rng.weibull(shape[w])
    return out


def sample_forward_recurrence(family, shape, scale, rng: np.random.Generator) -> np.ndarray:
    """Time to the first arrival from an arbitrary point of a stationary stream.

    It is U times a length-biased gap; a length-biased Gamma(k, s) gap is
    Gamma(k + 1, s), and a length-biased Weibull(k, s) gap is s * G**(1/k) with
    G ~ Gamma(1 + 1/k, 1).
    """
    u = rng.random(len(family))
    out = np.empty(len(family))
    g = family == GAMMA
    out[g] = rng.gamma(shape[g] + 1.0, scale[g])
    w = ~g
    with np.errstate(over="ignore"):
        out[w] = scale[w] * rng.gamma(1.0 + 1.0 / shape[w]) ** (1.0 / shape[w])
    return u * out


# ---------------------------------------------------------------- likelihood pieces


def _z(family, shape, scale, x):
    """Gamma: x / scale; Weibull: (x / scale) ** shape."""
    with np.errstate(over="ignore", divide="ignore"):
        r = np.maximum(x, 0.0) / scale
        return np.where(family == WEIBULL, r**shape, r)


def _cdf_sf(family, shape, z):
    """(F, S) from the standardized variable of :func:`_z`."""
    g = family == GAMMA
    f = np.where(g, special.gammainc(shape, z), -np.expm1(-z))
    s = np.where(g, special.gammaincc(shape, z), np.exp(-z))
    return f, s


def log_pdf(family, shape, scale, x) -> np.ndarray:
    x = np.maximum(x, 1e-300)
    with np.errstate(over="ignore", divide="ignore"):
        lr = np.log(x / scale)
        gamma_lp = (shape - 1.0) * lr - x / scale - special.gammaln(shape) - np.log(scale)
        weibull_lp = (
            np.log(shape) - np.log(scale) + (shape - 1.0) * lr - np.exp(np.minimum(shape * lr, 700.0))
        )
    return np.where(family == WEIBULL, weibull_lp, gamma_lp)


def log_sf(family, shape, scale, x) -> np.ndarray:
    """log P(gap >= x), with the Gamma tail taken from its asymptote where it underflows."""
    z = _z(family, shape, scale, x)
    _, s = _cdf_sf(family, shape, z)
    with np.errstate(divide="ignore"):
        gamma_tail = (shape - 1.0) * np.log(np.maximum(z, 1e-300)) - z - special.gammaln(shape)
        out = np.where(s > _TINY, np.log(np.maximum(s, _TINY)), gamma_tail)
    return np.where(family == WEIBULL, -z, out)


def log_interval(family, shape, scale, a, b) -> np.ndarray:
    """log P(a <= gap < b) for 0 <= a < b."""
    fa, sa = _cdf_sf(family, shape, _z(family, shape, scale, a))
    fb, sb = _cdf_sf(family, shape, _z(family, shape, scale, b))
    dense = log_pdf(family, shape, scale, 0.5 * (a + b)) + np.log(b - a)
    return _log_difference(fa, fb, sa, sb, dense)


def _log_difference(fa, fb, sa, sb, dense):
    """log(F(b) - F(a)) from the CDF in the left part and the survival in the tail.

    Where the difference lost more than 8 digits to cancellation (or underflowed),
    the density estimate ``dense`` is used instead.
    """
    left = fa < 0.5
    p = np.where(left, fb - fa, sa - sb)
    ref = np.where(left, fb, sa)
    exact = (p > ref * 1e-8) & (p > _TINY)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(exact, np.log(np.where(exact, p, 1.0)), dense)


def _log_mean(family, shape, scale):
    return np.log(scale) + np.log(_mean_over_scale(family, shape))


def _equilibrium_cdf_sf(family, shape, scale, x):
    """(F_e, S_e) of the forward recurrence time: F_e(x) = (x S(x) + E[X; X < x]) / mean."""
    z = _z(family, shape, scale, x)
    _, s = _cdf_sf(family, shape, z)
    g = family == GAMMA
    # E[X; X < x] / mean is a regularized incomplete gamma in both families.
    a_partial = np.where(g, shape + 1.0, 1.0 + 1.0 / shape)
    p_partial = special.gammainc(a_partial, z)
    q_partial = special.gammaincc(a_partial, z)
    x_over_mean = np.maximum(x, 0.0) / np.exp(_log_mean(family, shape, scale))
    fe = x_over_mean * s + p_partial
    se = q_partial - x_over_mean * s
    return fe, np.maximum(se, 0.0)


def log_sf_equilibrium(family, shape, scale, x) -> np.ndarray:
    """log P(no arrival within x of an arbitrary point)."""
    _, se = _equilibrium_cdf_sf(family, shape, scale, x)
    # In the far tail, integral_x^inf S(u) du ~ S(x) / hazard(x).
    lsf = log_sf(family, shape, scale, x)
    z = _z(family, shape, scale, x)
    with np.errstate(divide="ignore"):
        inv_hazard = np.where(
            family == WEIBULL,
            np.log(np.maximum(x, 1e-300)) - np.log(shape * np.maximum(z, 1e-300)),
            np.log(scale),
        )
        tail = lsf + inv_hazard - _log_mean(family, shape, scale)
        return np.where(se > _TINY, np.log(np.maximum(se, _TINY)), tail)


def log_interval_equilibrium(family, shape, scale, a, b) -> np.ndarray:
    """log P(a <= forward recurrence time < b)."""
    fa, sa = _equilibrium_cdf_sf(family, shape, scale, a)
    fb, sb = _equilibrium_cdf_sf(family, shape, scale, b)
    dense = log_sf(family, shape, scale, 0.5 * (a + b)) - _log_mean(family, shape, scale) + np.log(b - a)
    return _log_difference(fa, fb, sa, sb, dense)


# ---------------------------------------------------------------- maximum likelihood


def _group_sums(group, n_groups, *weights):
    return [np.bincount(group, weights=w, minlength=n_groups) for w in weights]


def _block_sums(blocks, n_groups, terms):
    """Per-group sums of ``terms(gap_s, group)`` (a list of arrays) over every (gap_s, group) block.

    With one block this is exactly ``np.bincount`` of each term; with several, the block
    sums are added (equal up to float rounding), so gaps larger than memory can be fitted
    block by block from a file.
    """
    total = None
    for gap_s, group in blocks():
        sums = _group_sums(group, n_groups, *terms(gap_s, group))
        total = sums if total is None else [a + b for a, b in zip(total, sums, strict=True)]
    if total is None:
        return _group_sums(np.zeros(0, np.int64), n_groups, *terms(np.zeros(0), np.zeros(0, np.int64)))
    return total


def _one_block(gap_s, group):
    gap_s = np.asarray(gap_s, dtype=np.float64)
    group = np.asarray(group, dtype=np.int64)
    return lambda: [(gap_s, group)]


def fit_gamma(gap_s, group, n_groups):
    """Gamma MLE per group (generalized Newton on the shape). Returns shape, scale, loglik."""
    return fit_gamma_blocks(_one_block(gap_s, group), n_groups)


def fit_gamma_blocks(blocks, n_groups):
    """:func:`fit_gamma` over the (gap_s, group) arrays that ``blocks()`` yields."""
    n, s1, slog = _block_sums(blocks, n_groups, lambda x, g: [np.ones_like(x), x, np.log(x)])
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / n
        s = np.maximum(np.log(mean) - slog / n, 1e-9)
        k = (3.0 - s + np.sqrt((s - 3.0) ** 2 + 24.0 * s)) / (12.0 * s)
        for _ in range(6):
            f = np.log(k) - special.digamma(k) - s
            fp = 1.0 / k - special.polygamma(1, k)
            k = 1.0 / (1.0 / k + f / (k * k * fp))
        k = clip_shape(np.full(n_groups, GAMMA), np.nan_to_num(k, nan=1.0))
        scale = mean / k
        loglik = (k - 1.0) * slog - s1 / scale - n * (special.gammaln(k) + k * np.log(scale))
    return k, scale, loglik


def fit_weibull(gap_s, group, n_groups, iterations: int = 40):
    """Weibull MLE per group (safeguarded Newton on the shape). Returns shape, scale, loglik."""
    return fit_weibull_blocks(_one_block(gap_s, group), n_groups, iterations)


def fit_weibull_blocks(blocks, n_groups, iterations: int = 40):
    """:func:`fit_weibull` over the (gap_s, group) arrays that ``blocks()`` yields (a pass per iteration)."""
    n, s1 = _block_sums(blocks, n_groups, lambda x, g: [np.ones_like(x), x])
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / n

        def log_y(x, g):
            # Gaps in units of their group mean keep y**k in range.
            return np.log(x / mean[g])

        sum_ly, sum_y2 = _block_sums(blocks, n_groups, lambda x, g: [log_y(x, g), (x / mean[g]) ** 2])
        mean_ly = sum_ly / n
        cv = np.sqrt(np.maximum(sum_y2 / n - 1, 0))
        lo_k, hi_k = SHAPE_BOUNDS[WEIBULL]
        lo, hi = np.full(n_groups, lo_k), np.full(n_groups, hi_k)
        k = np.clip(np.nan_to_num(np.maximum(cv, 1e-3) ** -1.086, nan=1.0), lo_k, hi_k)

        def moments(x, g):
            ly = log_y(x, g)
            yk = np.exp(k[g] * ly)
            return [yk, yk * ly, yk * ly * ly]

        for _ in range(iterations):
            a0, a1, a2 = _block_sums(blocks, n_groups, moments)
            m1 = a1 / a0
            h = m1 - 1.0 / k - mean_ly  # increasing in k; zero at the MLE
            hp = a2 / a0 - m1 * m1 + 1.0 / (k * k)
            step = k - h / hp
            done = ~(np.abs(h) > 1e-12) | (np.abs(step - k) < 1e-12 * k)
            if done.all():
                break
            lo = np.where(h < 0, k, lo)
            hi = np.where(h > 0, k, hi)
            inside = (step >= lo) & (step <= hi)
            # Newton inside the bracket, else bisect (in log k); converged groups stay put.
            k = np.where(done, k, np.where(inside, step, np.sqrt(lo * hi)))
        a0, slog = _block_sums(blocks, n_groups, lambda x, g: [np.exp(k[g] * log_y(x, g)), np.log(x)])
        scale = mean * (a0 / n) ** (1.0 / k)
        # At the MLE sum((x / scale) ** k) = n.
        loglik = n * np.log(k) - n * k * np.log(scale) + (k - 1.0) * slog - n
    return k, scale, loglik


def fit_renewal(gap_s, group, n_groups):
    """Per group: the better of Gamma and Weibull by likelihood, plus the empirical CV.

    Returns (family codes, shape, scale, cv); groups with fewer than two gaps get NaN shape.
    """
    return fit_renewal_blocks(_one_block(gap_s, group), n_groups)


def fit_renewal_blocks(blocks, n_groups):
    """:func:`fit_renewal` over the (gap_s, group) arrays that ``blocks()`` yields, block by block."""
    n, s1, s2 = _block_sums(blocks, n_groups, lambda x, g: [None, x, x**2])
    n = n.astype(np.int64)
    kg, sg, lg = fit_gamma_blocks(blocks, n_groups)
    kw, sw, lw = fit_weibull_blocks(blocks, n_groups)
    weibull = np.nan_to_num(lw, nan=-np.inf) > np.nan_to_num(lg, nan=-np.inf)
    family = np.where(weibull, WEIBULL, GAMMA).astype(np.int8)
    shape = np.where(weibull, kw, kg)
    scale = np.where(weibull, sw, sg)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / n
        cv = np.sqrt(np.maximum(s2 / n - mean**2, 0.0)) / mean
    few = n < 2
    shape[few] = np.nan
    scale[few] = np.nan
    cv[few] = np.nan
    return family, shape, scale, cv
