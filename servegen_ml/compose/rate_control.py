"""Rate control: factors that bring each segment's natural aggregate rate to the target.

Every client's rate in a segment is multiplied by the segment's factor, so
client shares and burstiness (CV) are kept (docs/baselines.md, docs/neural.md). For a piecewise-linear
curve the generation span is cut into steps of :data:`CURVE_STEP_S` and each
step's target is the curve's mean over it (exact integral), so a ramp inside a
rate window is followed at that resolution.
"""

from __future__ import annotations

import numpy as np

from servegen_ml.core.spec import RateSpec

CURVE_STEP_S = 60.0


def segment_step_s(rate: RateSpec) -> float | None:
    """How finely to cut segments for this rate spec (None: rate windows only)."""
    return CURVE_STEP_S if rate.kind == "curve" else None


def segment_multipliers(
    rate: RateSpec, seg_start_rel_s: np.ndarray, seg_end_rel_s: np.ndarray, natural_rate: np.ndarray
) -> np.ndarray:
    """Factor per segment (times relative to the spec's start; natural_rate in req/s)."""
    natural_rate = np.asarray(natural_rate, dtype=np.float64)
    if rate.kind != "curve":
        mid = 0.5 * (np.asarray(seg_start_rel_s) + np.asarray(seg_end_rel_s))
        return rate.multiplier(mid, natural_rate)
    length = np.maximum(np.asarray(seg_end_rel_s) - np.asarray(seg_start_rel_s), 1e-12)
    target = (curve_integral(rate, seg_end_rel_s) - curve_integral(rate, seg_start_rel_s)) / length
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(natural_rate > 0, target / natural_rate, 0.0)


def curve_integral(rate: RateSpec, t_s: np.ndarray) -> np.ndarray:
    """Integral of the curve (held flat beyond its ends) from its first knot to ``t_s`` (requests)."""
    knots = np.asarray(rate.curve_t_s, dtype=np.float64)
    values = np.asarray(rate.curve_rate, dtype=np.float64)
    cum = np.concatenate([[0.0], np.cumsum(np.diff(knots) * 0.5 * (values[1:] + values[:-1]))])
    t = np.asarray(t_s, dtype=np.float64)
    i = np.clip(np.searchsorted(knots, t, side="right") - 1, 0, len(knots) - 1)
    x0 = knots[i]
    r_t = np.interp(t, knots, values)
    inside = 0.5 * (values[i] + r_t) * (t - x0)
    return cum[i] + inside
