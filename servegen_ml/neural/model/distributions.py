"""The heads' distributions: exact discretized log-likelihoods in torch, exact sampling via numpy.

* :class:`GapMixture` — inter-arrival gap: a point mass at 0 (simultaneous
  arrivals) plus a log-normal mixture; scored as ``log P(gap in [g, g + res))``
  (or any interval: a real-time bin in unit time) and with a survival term ``log P(gap >= s)``.
* :class:`CountMixture` — a token or item count: categorical over frequent exact
  values ("spikes") plus a normal mixture on ``log(n + 1)`` discretized to the
  integers (bin of n is ``[log(n + 0.5), log(n + 1.5))``).
* :class:`RatioMixture` — a part of a total (reasoning of output tokens): point
  masses at ratio 0 and 1, at frequent ratios ("spikes", each giving the part
  round(ratio * total)) and a logit-normal mixture discretized to integers.

Parameters are in data units (log-seconds, log-tokens, logits). Log-probs are
computed in ``dtype``: float64 for scoring (bins can be a millionth of a
standard deviation wide), float32 for training speed, where narrow bins switch
to the midpoint rule earlier (relative error below 1e-4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.special import log_ndtr

from servegen_ml.neural.sampling import draws as sampling
from servegen_ml.neural.sampling.draws import LOG_SCALE_MAX, LOG_SCALE_MIN

# Bins narrower than this (in standard deviations) use the midpoint rule: the CDF difference cancels.
MIDPOINT_WIDTH = {torch.float64: 1e-5, torch.float32: 1e-2}
# Stand-in for an infinite bin edge, in data units; finite so gradients stay finite.
FAR_EDGE = 1e4
# log_ndtr arguments are floored here (log Phi = -5e5): beyond it float32 gradients overflow, and
# such an outcome is impossible under the model either way.
ARG_FLOOR = -1e3
# A lower bin end more than this many standard deviations below min(upper end, 0) adds nothing (< e^-800).
MAX_SPAN = 40.0
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and for very negative x."""
    near_zero = x > -math.log(2.0)
    # Each branch gets a harmless stand-in where it is not used, so neither passes NaN gradients.
    xa = torch.where(near_zero, x, torch.full_like(x, -1.0))
    xb = torch.where(near_zero, torch.full_like(x, -1.0), x)
    return torch.where(near_zero, torch.log(-torch.expm1(xa)), torch.log1p(-torch.exp(xb)))


def safe_log_ndtr(x: Tensor) -> Tensor:
    """log Phi(x) with x floored at ARG_FLOOR."""
    return log_ndtr(x.clamp(min=ARG_FLOOR))


def log_normal_interval(a: Tensor, width: Tensor) -> Tensor:
    """log(Phi(a + width) - Phi(a)) for finite a and width > 0 (standard-normal units).

    Mirrors the interval into the lower tail, where log_ndtr is accurate, and
    uses the midpoint density for very narrow bins.
    """
    b = a + width
    flip = (a + b) > 0
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    narrow = width < MIDPOINT_WIDTH[a.dtype]
    hi_far = hi.clamp(min=ARG_FLOOR)
    l_hi, l_lo = log_ndtr(hi_far), log_ndtr(torch.maximum(lo, hi_far.clamp(max=0.0) - MAX_SPAN))
    # Keep the unused branch finite so torch.where passes no NaN gradients.
    diff = torch.where(narrow, torch.full_like(l_lo, -1.0), l_lo - l_hi)
    exact = l_hi + log1mexp(diff)
    mid = torch.where(narrow, 0.5 * (lo + hi), torch.zeros_like(lo))
    safe_width = torch.where(narrow, width, torch.ones_like(width))
    midpoint = -0.5 * mid**2 - _LOG_SQRT_2PI + torch.log(safe_width)
    return torch.where(narrow, midpoint, exact)


def _scale(log_scale: Tensor) -> Tensor:
    return torch.exp(log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX))


def _np(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def _flat(x: Tensor) -> np.ndarray:
    """(..., K) -> (N, K) numpy float64."""
    return _np(x).reshape(-1, x.shape[-1])


def _log_integer_mass(n: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log of a normal's mass on log(n + 1) in the bin [log(n + 0.5), log(n + 1.5)) of integer n."""
    lower = torch.where(n > 0, torch.log(n + 0.5), torch.full_like(n, -FAR_EDGE))
    # The width as log1p, not upper - lower: in float32 the two logs are equal past ~10^6 (a bin of
    # zero width: log P = -inf, and the whole training run turned NaN).
    width = torch.where(n > 0, torch.log1p(1.0 / (n + 0.5)), torch.log(n + 1.5) - lower)
    return log_normal_interval((lower - loc) / scale, width / scale)


@dataclass
class GapMixture:
    """Inter-arrival gap in seconds: P(gap = 0) = sigmoid(zero_logit), else log-normal mixture.

    zero_logit (...); comp_logits, loc, log_scale (..., K): loc/scale of log(gap_s).
    """

    zero_logit: Tensor
    comp_logits: Tensor
    loc: Tensor
    log_scale: Tensor
    dtype: torch.dtype = torch.float64

    def _parts(self):
        d = self.dtype
        log_w = torch.log_softmax(self.comp_logits.to(d), -1)
        zl = self.zero_logit.to(d)
        return torch.nn.functional.logsigmoid(zl), torch.nn.functional.logsigmoid(-zl), log_w

    def log_prob(self, gap_s: Tensor, resolution_s: float) -> Tensor:
        """log P(gap in [g, g + resolution_s)); the point mass counts when g == 0. gap_s (...) -> (...)."""
        g = gap_s.to(self.dtype)
        return self.log_prob_interval(g, torch.full_like(g, resolution_s), g > 0)

    def log_prob_interval(self, lower: Tensor, width: Tensor, positive: Tensor) -> Tensor:
        """log P(gap in [lower, lower + width)) where ``positive``, else log P(gap < width) with the point mass.

        A bin of real time mapped through a time change (the rate level's unit time) is such an
        interval, so the likelihood in real time is exact without a separate Jacobian term.
        """
        log_p0, log_p1, log_w = self._parts()
        d = self.dtype
        lower, width = lower.to(d), width.to(d)
        loc, scale = self.loc.to(d), _scale(self.log_scale.to(d))
        # A positive gap far below the clock's rounding still gets a finite bin.
        lo_safe = torch.where(positive, lower.clamp(min=torch.finfo(d).tiny), width).unsqueeze(-1)
        w = width.unsqueeze(-1)
        a = (torch.log(lo_safe) - loc) / scale
        log_bin = torch.logsumexp(log_w + log_normal_interval(a, torch.log1p(w / lo_safe) / scale), -1)
        log_below = torch.logsumexp(log_w + safe_log_ndtr((torch.log(w) - loc) / scale), -1)
        at_zero = torch.logaddexp(log_p0, log_p1 + log_below)
        return torch.where(positive, log_p1 + log_bin, at_zero)

    def log_survival(self, s: Tensor) -> Tensor:
        """log P(gap >= s): the next event falls at or after ``s`` seconds. s (...) -> (...)."""
        _, log_p1, log_w = self._parts()
        d = self.dtype
        s = s.to(d)
        positive = s > 0
        s_safe = torch.where(positive, s, torch.ones_like(s)).unsqueeze(-1)
        z = (torch.log(s_safe) - self.loc.to(d)) / _scale(self.log_scale.to(d))
        tail = log_p1 + torch.logsumexp(log_w + safe_log_ndtr(-z), -1)
        return torch.where(positive, tail, torch.zeros_like(tail))

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One gap (seconds) per batch element, flattened."""
        return sampling.sample_gap(
            _np(self.zero_logit).reshape(-1),
            _flat(self.comp_logits),
            _flat(self.loc),
            _flat(self.log_scale),
            rng,
        )


@dataclass
class CountMixture:
    """Integer count n >= 0: spike values with probabilities, or a discretized normal mixture on log(n + 1).

    spike_values (V,) sorted int64; logits (..., V + 1) [spikes, continuous];
    comp_logits, loc, log_scale (..., K) of log(n + 1). With ``floor`` > 0 the
    whole is mixed with weight ``floor`` with a fixed broad normal on log(n + 1)
    (``base_loc``, ``base_log_scale``), so a value the model has never seen
    keeps a sane probability instead of ~0.
    """

    spike_values: Tensor
    logits: Tensor
    comp_logits: Tensor
    loc: Tensor
    log_scale: Tensor
    dtype: torch.dtype = torch.float64
    floor: float = 0.0
    base_loc: float = 0.0
    base_log_scale: float = 0.0

    def log_prob_continuous(self, n: Tensor) -> Tensor:
        """log P(n) of the continuous part alone (its mass on integer n)."""
        d = self.dtype
        log_mass = _log_integer_mass(n.to(d).unsqueeze(-1), self.loc.to(d), _scale(self.log_scale.to(d)))
        return torch.logsumexp(torch.log_softmax(self.comp_logits.to(d), -1) + log_mass, -1)

    def log_prob(self, n: Tensor) -> Tensor:
        """log P(n) for integer counts n (...) -> (...)."""
        log_pi = torch.log_softmax(self.logits.to(self.dtype), -1).expand(*n.shape, -1)
        model = log_pi[..., -1] + self.log_prob_continuous(n)
        n_spikes = len(self.spike_values)
        if n_spikes:
            values = self.spike_values.to(n.device)
            idx = torch.searchsorted(values, n.contiguous()).clamp(max=n_spikes - 1)
            hit = values[idx] == n
            spike = torch.gather(log_pi[..., :-1], -1, idx.unsqueeze(-1)).squeeze(-1)
            model = torch.logaddexp(model, torch.where(hit, spike, torch.full_like(spike, -math.inf)))
        if self.floor <= 0:
            return model
        d = self.dtype
        base_loc = torch.tensor(self.base_loc, dtype=d, device=n.device)
        base_scale = torch.tensor(math.exp(self.base_log_scale), dtype=d, device=n.device)
        base = _log_integer_mass(n.to(d), base_loc, base_scale)
        return torch.logaddexp(math.log1p(-self.floor) + model, math.log(self.floor) + base)

    def sample(self, rng: np.random.Generator, max_count: int) -> np.ndarray:
        return sampling.sample_count(
            self.spike_values.cpu().numpy(),
            _flat(self.logits),
            _flat(self.comp_logits),
            _flat(self.loc),
            _flat(self.log_scale),
            max_count,
            rng,
            (self.floor, self.base_loc, self.base_log_scale),
        )


@dataclass
class RatioMixture:
    """A part k of a total n (0 <= k <= n): ratio 0, ratio 1, a spike ratio, or a logit-normal
    mixture rounded to k.

    logits (..., 3 + V) [ratio 0, ratio 1, continuous, V spikes]; comp_logits, loc, log_scale
    (..., K) of logit(ratio); spike_keys (V,) int64 grid keys of the spike ratios
    (:data:`~servegen_ml.neural.sampling.draws.RATIO_SPIKE_SCALE`). The continuous bin of k is
    ratio in [(k - 0.5) / n, (k + 0.5) / n) clipped to [0, 1]; a spike holds the k it rounds to
    for this n; a total of 0 has k = 0 surely.
    """

    logits: Tensor
    comp_logits: Tensor
    loc: Tensor
    log_scale: Tensor
    dtype: torch.dtype = torch.float64
    spike_keys: Tensor | None = None

    def log_prob(self, part: Tensor, total: Tensor) -> Tensor:
        """log P(part | total) for integer tensors (...) -> (...)."""
        d = self.dtype
        k, n = part.to(d), total.to(d)
        # logit((k -/+ 0.5) / n) from the counts themselves, and an open bin's width as log1p terms:
        # ratios and differences of logits lose it in float32 at totals in the millions (width 0,
        # log P -inf). The clamps only keep the unused branches finite.
        below, above = (k - 0.5).clamp(min=0.5), (n - k - 0.5).clamp(min=0.5)  # k - 0.5, n - k - 0.5
        lower = torch.where(k > 0, torch.log(below) - torch.log(n - k + 0.5), torch.full_like(k, -FAR_EDGE))
        upper = torch.where(k < n, torch.log(k + 0.5) - torch.log(above), torch.full_like(k, FAR_EDGE))
        inner = torch.log1p(1.0 / below) + torch.log1p(1.0 / above)
        width = torch.where((k > 0) & (k < n), inner, upper - lower)
        loc, scale = self.loc.to(d), _scale(self.log_scale.to(d))
        a = (lower.unsqueeze(-1) - loc) / scale
        width = width.unsqueeze(-1) / scale
        cont = torch.logsumexp(
            torch.log_softmax(self.comp_logits.to(d), -1) + log_normal_interval(a, width), -1
        )
        log_pi = torch.log_softmax(self.logits.to(d), -1)
        minus_inf = torch.full_like(cont, -math.inf)
        at_zero = torch.where(k == 0, log_pi[..., 0], minus_inf)
        at_one = torch.where(k == n, log_pi[..., 1], minus_inf)
        terms = [at_zero, at_one, log_pi[..., 2] + cont]
        if self.spike_keys is not None and len(self.spike_keys):
            keys = self.spike_keys.to(part.device)
            hit = sampling.ratio_spike_part(keys, total.long().unsqueeze(-1)) == part.long().unsqueeze(-1)
            terms.append(torch.logsumexp(log_pi[..., 3:].masked_fill(~hit, -math.inf), -1))
        out = torch.logsumexp(torch.stack(terms, -1), -1)
        return torch.where(n > 0, out, torch.zeros_like(out))

    def sample(self, total: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return sampling.sample_ratio_tokens(
            _flat(self.logits),
            _flat(self.comp_logits),
            _flat(self.loc),
            _flat(self.log_scale),
            np.asarray(total).reshape(-1),
            rng,
            None if self.spike_keys is None else self.spike_keys.cpu().numpy(),
        )
