"""Event features and head-parameter transforms, written once for numpy and torch (``xp``).

The training model (torch) and the sampling step (numpy) call the same
functions with ``xp=torch`` or ``xp=numpy`` so the two cannot drift apart.

Feature vectors (all standardized; names in :func:`event_feature_names`):

* the *event* vector, the recurrent encoder's input for one past event: its
  log gap (per-client standardized), zero-gap and start flags, its marks
  (log1p counts standardized by field), reasoning ratio, the client's
  *activity* (its standardized log empirical rate in the learned timeline at
  the event's time and a few hours ahead: when a client usually sleeps, one
  day of Fourier features cannot say sharply; see :func:`activity_position`
  for times past the learned span), and Fourier features of time of day and
  day of week;
* the *condition* vector, what is known of the event being predicted while its
  marks are drawn in order: gap, then per modality item count and mean item
  tokens, then input, then output. Head ``j`` sees a prefix of it.
"""

from __future__ import annotations

import math

import numpy as np

from servegen_ml.core.spec import DAY_S, WEEK_S, wrap_period
from servegen_ml.neural.data.events import MarkLayout

# Share of every count's probability given to a broad fixed normal (values never seen in training).
COUNT_FLOOR = 1e-3
# Standardized gap features are clipped to +-Z_CLIP.
Z_CLIP = 8.0
# Gaps below this (in unit time: a millionth of the client's mean gap) count as this in the features.
GAP_FLOOR = 1e-6
# Bounds of every gap component's sigma (log unit gap): a bounded sigma keeps each component's mean
# exp(mu + sigma^2 / 2) finite, so the mixture's mean can be pinned (unit_gap_params).
GAP_SIGMA_MIN, GAP_SIGMA_MAX = 0.05, 3.0
# The activity features look this far ahead of an event (s).
ACTIVITY_HORIZONS_S = (0.0, 600.0, 3600.0, 3 * 3600.0, 6 * 3600.0)


def condition_names(layout: MarkLayout) -> list[str]:
    names = ["z_gap", "zero_gap"]
    for m in layout.modalities:
        names += [f"z_{m}_count", f"z_{m}_item"]
    return names + ["z_input", "z_output"]


def event_feature_names(layout: MarkLayout, day_harmonics: int, week_harmonics: int) -> list[str]:
    names = ["start"] + condition_names(layout) + (["ratio"] if layout.has_reasoning else [])
    names += [f"activity_{h:g}s" for h in ACTIVITY_HORIZONS_S]
    for period, k in (("day", day_harmonics), ("week", week_harmonics)):
        names += [f"{f}_{period}_{i}" for i in range(1, k + 1) for f in ("sin", "cos")]
    return names


def visible_prefix(layout: MarkLayout) -> dict[str, int]:
    """How many leading condition entries each head sees (marks are drawn in this order)."""
    names = condition_names(layout)
    out = {"time": 0}
    for m in layout.modalities:
        out[f"{m}_count"] = names.index(f"z_{m}_count")
        out[f"{m}_tokens"] = names.index(f"z_{m}_item")
    out["input"] = names.index("z_input")
    out["output"] = names.index("z_output")
    if layout.has_reasoning:
        out["reasoning"] = len(names)
    return out


def fourier(xp, time_s, day_harmonics: int, week_harmonics: int):
    """sin/cos of time of day and day of week (..., 2 * (day + week harmonics))."""
    feats = []
    for period, k in ((DAY_S, day_harmonics), (WEEK_S, week_harmonics)):
        phase = (time_s % period) * (2 * math.pi / period)
        for i in range(1, k + 1):
            feats += [xp.sin(i * phase), xp.cos(i * phase)]
    return feats


def wrap_position(xp, p, span_s: float):
    """:func:`servegen_ml.core.spec.wrap_time` for numpy or torch (positions p >= 0)."""
    period = wrap_period(span_s)
    k = xp.where(p >= span_s, xp.clip(xp.ceil((p - span_s) / period + 1e-12), 1.0, None), 0.0 * p)
    return p - k * period


def feature_position(xp, p, span_s: float):
    """The learned-timeline position whose features (activity, time of day) an event at position
    ``p`` reads: ``p`` inside the span; later positions move back whole periods (phase kept, as
    :func:`wrap_position`), earlier ones forward. The sampler and the likelihood both read them so,
    so a held-out time is scored under the distribution the generator samples there."""
    return xp.where(p >= 0, wrap_position(xp, p, span_s), p % wrap_period(span_s))


def activity_position(xp, p, span_s: float):
    """Where to read the activity table: a day or more learned wraps (time of day is kept); less than
    a day holds the last learned bin (wrapping would jump to another time of day)."""
    if span_s >= DAY_S:
        return wrap_position(xp, p, span_s)
    return xp.clip(p, 0.0, span_s)


def activity_features(xp, table, client, position_s, bin_s: float, span_s: float) -> list:
    """table[client, bin of (position + horizon)] per horizon; table (C, bins) of standardized log rates."""
    n_bins = table.shape[1]
    last = min(n_bins - 1, int(np.ceil(span_s / bin_s)) - 1)
    out = []
    for h in ACTIVITY_HORIZONS_S:
        b = xp.clip(activity_position(xp, position_s + h, span_s) // bin_s, 0, last)
        out.append(table[client, b.long() if hasattr(b, "long") else b.astype(np.int64)])
    return out


def _z_log1p(xp, count, mean, std):
    return (xp.log1p(count * 1.0) - mean) / std


def gap_feature(xp, gap, gap_mean, gap_std):
    """Standardized log gap (unit time), clipped: a zero gap sits at log(GAP_FLOOR), below the clip."""
    return xp.clip((xp.log(xp.clip(gap, GAP_FLOOR, None)) - gap_mean) / gap_std, -Z_CLIP, Z_CLIP)


def condition_features(
    xp, layout: MarkLayout, gap_s, gap_mean, gap_std, marks: dict, mark_mean, mark_std, fields
):
    """Condition entries (list of arrays, :func:`condition_names` order) of events with known marks.

    gap_mean/gap_std: the client's log-gap normalizer, broadcastable to gap_s;
    marks: ``input``, ``output``, ``{m}_count``, ``{m}_item_log`` arrays;
    mark_mean/mark_std indexed like ``fields`` (:meth:`MarkLayout.count_fields`).
    """
    f = {name: i for i, name in enumerate(fields)}
    feats = [gap_feature(xp, gap_s, gap_mean, gap_std), (gap_s <= 0) * 1.0]
    for m in layout.modalities:
        count = marks[f"{m}_count"]
        i, j = f[f"{m}_count"], f[f"{m}_tokens"]
        z_item = (marks[f"{m}_item_log"] - mark_mean[j]) / mark_std[j]
        feats += [_z_log1p(xp, count, mark_mean[i], mark_std[i]), xp.where(count > 0, z_item, 0.0)]
    feats.append(_z_log1p(xp, marks["input"], mark_mean[f["input"]], mark_std[f["input"]]))
    feats.append(_z_log1p(xp, marks["output"], mark_mean[f["output"]], mark_std[f["output"]]))
    return feats


def event_features(
    xp,
    layout,
    time_s,
    gap_s,
    is_start,
    gap_mean,
    gap_std,
    marks,
    mark_mean,
    mark_std,
    fields,
    harmonics,
    activity,
):
    """Event entries (list of arrays, :func:`event_feature_names` order); start tokens carry only the flag and time.

    ``activity``: the :func:`activity_features` of the events' clients at ``time_s``.
    """
    keep = 1.0 - is_start * 1.0
    cond = condition_features(xp, layout, gap_s, gap_mean, gap_std, marks, mark_mean, mark_std, fields)
    feats = [is_start * 1.0] + [c * keep for c in cond]
    if layout.has_reasoning:
        feats.append(keep * marks["reasoning"] / xp.clip(marks["output"] * 1.0, 1.0, None))
    return feats + list(activity) + fourier(xp, time_s, *harmonics)


def split_params(raw, n_logits: int, n_components: int):
    """Raw head output (..., n_logits + 3K) -> logits, component logits, loc, log_scale."""
    k = n_components
    a, b = n_logits, n_logits + k
    return raw[..., :a], raw[..., a:b], raw[..., b : b + k], raw[..., b + k : b + 2 * k]


def unit_gap_params(xp, raw, n_components: int):
    """Time head output (..., 1 + 3K) -> zero_logit (...), comp_logits, loc, log_scale (..., K) of log unit gap.

    Every component's sigma is squashed into [GAP_SIGMA_MIN, GAP_SIGMA_MAX] and all
    locations are shifted together so the gap's mean is exactly 1:
    ``(1 - p0) sum_k w_k exp(mu_k + sigma_k^2 / 2) = 1``. The shift is differentiable, so the
    head learns only the gap's shape; the level stays with the rate level (rate_level module).
    """
    zero, comp, loc, s = split_params(raw, 1, n_components)
    sigma = GAP_SIGMA_MIN + (GAP_SIGMA_MAX - GAP_SIGMA_MIN) / (1.0 + xp.exp(-s))
    log_w = comp - _logsumexp(xp, comp)
    # log(1 - p0) = -softplus(zero), written stably.
    log_p1 = -(xp.maximum(zero, 0.0 * zero) + xp.log1p(xp.exp(-xp.abs(zero))))
    shift = -(log_p1 + _logsumexp(xp, log_w + loc + 0.5 * sigma * sigma))
    return zero[..., 0], comp, loc + shift, xp.log(sigma)


def _logsumexp(xp, x):
    """log sum exp over the last axis, kept (..., 1)."""
    if xp is np:
        m = x.max(axis=-1, keepdims=True)
        return m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
    return xp.logsumexp(x, -1, keepdim=True)


def count_floor(mark_mean: float, mark_std: float) -> tuple[float, float, float]:
    """(weight, loc, log_scale) of the broad normal on log(n + 1) every count head is mixed with:
    the field's own training spread, doubled, with weight COUNT_FLOOR."""
    return COUNT_FLOOR, mark_mean, math.log(2.0 * mark_std)


def destandardize(xp, loc, log_scale, mean, std):
    """Mixture parameters from standardized units back to data units (mean/std broadcast over K)."""
    return mean + std * loc, xp.log(std) + log_scale
