"""Exact samplers of the heads' distributions, in numpy (no torch).

The torch distributions in :mod:`servegen_ml.neural.model.distributions` and the
numpy sampling step share these functions, so a distribution is sampled one
way only. Parameters arrive already in data units (see each function); every
function takes an explicit ``np.random.Generator`` and draws in a fixed order.
"""

from __future__ import annotations

import numpy as np

# Log-scale bounds of every mixture component, shared with the torch side.
LOG_SCALE_MIN = -7.0
LOG_SCALE_MAX = 3.0
# Ratio spikes are frequent ratios on this grid (key k means ratio k / RATIO_SPIKE_SCALE).
RATIO_SPIKE_SCALE = 10_000
# Categories per group of the two-stage categorical draw (sample_categorical).
CATEGORY_GROUP = 16


def ratio_key(part, total):
    """Grid key of part / total, rounded to nearest (integer arithmetic: numpy or torch, total > 0)."""
    return (2 * part * RATIO_SPIKE_SCALE + total) // (2 * total)


def ratio_spike_part(key, total):
    """The part a spike ratio gives for ``total``: round(key / RATIO_SPIKE_SCALE * total), at most total."""
    return (2 * key * total + RATIO_SPIKE_SCALE) // (2 * RATIO_SPIKE_SCALE)


def sample_categorical(
    logits: np.ndarray, rng: np.random.Generator, owner: np.ndarray | None = None
) -> np.ndarray:
    """Index drawn from softmax(logits) per row (inverse CDF); logits (B, K) -> (B,) int64.

    ``owner`` (N,): draw N indices instead, the i-th from row ``owner[i]`` (the items of one
    event share their event's distribution, which is then computed once, not per item).
    Probabilities stay unnormalized (each uniform is scaled by its row's total) and
    in the logits' dtype. Past CATEGORY_GROUP * 4 categories (the spike values, a few
    hundred per field: the sampling step's widest arrays) the index is drawn in two
    stages, a group of every CATEGORY_GROUP-th category then a category within it,
    so no row needs a cumulative sum over all K (numpy's cumsum along a row is the
    step's slowest operation).
    """
    b, k = logits.shape
    n = b if owner is None else len(owner)
    if k < 4 * CATEGORY_GROUP:
        p = logits - logits.max(axis=-1, keepdims=True)
        np.exp(p, out=p)
        return _inverse_cdf(p, rng.random(n), owner)
    m = -(-k // CATEGORY_GROUP)
    # Group g holds categories g, g + G, g + 2G, ...; the padding past K has probability 0.
    p = np.zeros((b, m * CATEGORY_GROUP), dtype=logits.dtype)
    body = p[:, :k]
    np.subtract(logits, logits.max(axis=-1, keepdims=True), out=body)
    np.exp(body, out=body)
    u = rng.random((2, n))
    group = _inverse_cdf(np.ones(m, dtype=p.dtype) @ p.reshape(b, m, CATEGORY_GROUP), u[0], owner)
    row = np.arange(b) if owner is None else owner
    members = (row * p.shape[1] + group)[:, None] + CATEGORY_GROUP * np.arange(m)
    return group + CATEGORY_GROUP * _inverse_cdf(p.ravel().take(members), u[1])


def _inverse_cdf(weights: np.ndarray, u: np.ndarray, owner: np.ndarray | None = None) -> np.ndarray:
    """Per row (per ``owner`` entry: of row ``owner[i]``), the first index whose cumulative weight
    reaches u times the row's total.

    A category of weight 0 is never drawn while u > 0: the cumulative weight only
    reaches the target where it rises.
    """
    cdf = np.cumsum(weights, axis=-1)
    if owner is not None:
        cdf = cdf[owner]
    target = (u * cdf[:, -1]).astype(cdf.dtype)
    return np.count_nonzero(cdf < target[:, None], axis=-1)


def sample_mixture_normal(
    comp_logits: np.ndarray,
    loc: np.ndarray,
    log_scale: np.ndarray,
    rng: np.random.Generator,
    owner: np.ndarray | None = None,
) -> np.ndarray:
    """One draw per row of a normal mixture; all (B, K) -> (B,) (``owner``: see sample_categorical)."""
    k = sample_categorical(comp_logits, rng, owner)
    rows = np.arange(len(k)) if owner is None else owner
    z = rng.standard_normal(len(k))
    scale = np.exp(np.clip(log_scale[rows, k], LOG_SCALE_MIN, LOG_SCALE_MAX))
    return loc[rows, k] + scale * z


def sample_gap(
    zero_logit: np.ndarray,
    comp_logits: np.ndarray,
    loc: np.ndarray,
    log_scale: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Inter-arrival gaps in seconds: exactly 0 with prob sigmoid(zero_logit), else log-normal mixture.

    zero_logit (B,); comp_logits, loc, log_scale (B, K) with loc/scale of log(gap_s).
    """
    is_zero = rng.random(len(zero_logit)) < 1.0 / (1.0 + np.exp(-zero_logit))
    log_gap = sample_mixture_normal(comp_logits, loc, log_scale, rng)
    return np.where(is_zero, 0.0, np.exp(np.minimum(log_gap, 700.0)))


def sample_forward_gap(
    comp_logits: np.ndarray, loc: np.ndarray, log_scale: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Time to the next event seen from an arbitrary moment, not from an event (the forward recurrence time).

    For gaps of mean 1 its density is P(gap > x): a length-biased gap times a uniform. A
    length-biased log-normal(mu, sigma) is log-normal(mu + sigma^2, sigma) and a component's
    weight grows with its mean, w_k exp(mu_k + sigma_k^2 / 2); the point mass at 0 drops out.
    """
    scale = np.exp(log_scale)
    biased = comp_logits + loc + 0.5 * scale * scale
    log_gap = sample_mixture_normal(biased, loc + scale * scale, log_scale, rng)
    return rng.random(len(log_gap)) * np.exp(np.minimum(log_gap, 700.0))


def sample_count(
    spike_values: np.ndarray,
    logits: np.ndarray,
    comp_logits: np.ndarray,
    loc: np.ndarray,
    log_scale: np.ndarray,
    max_count: int,
    rng: np.random.Generator,
    floor: tuple[float, float, float] = (0.0, 0.0, 0.0),
    owner: np.ndarray | None = None,
) -> np.ndarray:
    """Integer counts >= 0: a spike value or the discretized mixture on log(n + 1).

    logits (B, V + 1): V spike values then the continuous part; comp_logits, loc,
    log_scale (B, K) of log(n + 1). n = floor(exp(y) - 0.5) is exact for bins
    [log(n + 0.5), log(n + 1.5)). ``floor`` = (weight, loc, log_scale) of the
    broad normal mixed in (see CountMixture). Draws beyond ``max_count`` are capped there.
    ``owner`` (N,): N draws, the i-th from row ``owner[i]``.
    """
    cat = sample_categorical(logits, rng, owner)
    y = sample_mixture_normal(comp_logits, loc, log_scale, rng, owner)
    out = _log_count(y, max_count)
    if len(spike_values):
        spikes = np.asarray(spike_values, dtype=np.int64)[np.minimum(cat, len(spike_values) - 1)]
        out = np.where(cat < len(spike_values), spikes, out)
    weight, base_loc, base_log_scale = floor
    if weight <= 0:
        return out
    use_base = rng.random(len(out)) < weight
    base = _log_count(base_loc + np.exp(base_log_scale) * rng.standard_normal(len(out)), max_count)
    return np.where(use_base, base, out)


def _log_count(y: np.ndarray, max_count: int) -> np.ndarray:
    """The integer whose bin [log(n + 0.5), log(n + 1.5)) holds y, capped at max_count."""
    n = np.floor(np.exp(np.clip(y, -50.0, np.log(max_count + 1.0))) - 0.5)
    return np.clip(n, 0, max_count).astype(np.int64)


def sample_ratio_tokens(
    logits: np.ndarray,
    comp_logits: np.ndarray,
    loc: np.ndarray,
    log_scale: np.ndarray,
    total: np.ndarray,
    rng: np.random.Generator,
    spike_keys: np.ndarray | None = None,
) -> np.ndarray:
    """Part of ``total`` (e.g. reasoning of output tokens): ratio 0, ratio 1, a logit-normal mixture
    or a spike ratio.

    logits (B, 3 + V): [ratio = 0, ratio = 1, continuous, V spike ratios (``spike_keys``, grid keys
    of :data:`RATIO_SPIKE_SCALE`)]; comp_logits, loc, log_scale (B, K) of logit(ratio). A ratio x
    gives round(x * total).
    """
    cat = sample_categorical(logits, rng)
    x = 1.0 / (1.0 + np.exp(-sample_mixture_normal(comp_logits, loc, log_scale, rng)))
    total = np.asarray(total, dtype=np.int64)
    out = np.clip(np.floor(x * total + 0.5), 0, total).astype(np.int64)
    if spike_keys is not None and len(spike_keys):
        key = np.asarray(spike_keys, dtype=np.int64)[np.clip(cat - 3, 0, len(spike_keys) - 1)]
        out = np.where(cat >= 3, ratio_spike_part(key, total), out)
    return np.where(cat == 0, 0, np.where(cat == 1, total, out))
