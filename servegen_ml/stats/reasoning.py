"""Reasoning statistics: the reasoning ratio (reasoning / output tokens), its bimodality, reasoning vs answer tokens.

The ratio is defined for requests with at least one output token. Bimodality
is judged by Sarle's bimodality coefficient (above 5/9 suggests two modes; a
very skewed single mode can also exceed it, so the report shows the histogram).
"""

from __future__ import annotations

import math

import numpy as np

from servegen_ml.stats.dependence import spearman
from servegen_ml.stats.histogram import IntHistogram, UnitHistogram, bimodality_from_moments
from servegen_ml.stats.sampling import Reservoir

BIMODAL_THRESHOLD = 5 / 9


def reasoning_ratio(reasoning_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
    """reasoning / output for rows with output > 0."""
    r, o = np.asarray(reasoning_tokens, np.float64), np.asarray(output_tokens, np.float64)
    keep = o > 0
    return r[keep] / o[keep]


def bimodality_coefficient(values: np.ndarray) -> float:
    """Sarle's bimodality coefficient of a sample (the same formula the streaming histogram uses)."""
    x = np.asarray(values, np.float64)
    return bimodality_from_moments(len(x), *(float(np.mean(x**k)) for k in (1, 2, 3, 4)))


class ReasoningAccumulator:
    """Streaming reasoning statistics.

    Exact: ratio moments (mean, std, bimodality coefficient), point masses at 0
    and 1, ratio histogram at 1/500 resolution, token totals. Approximate: token
    quantiles above 2048 (log bins) and the Spearman correlations (uniform sample).
    """

    def __init__(self, rng: np.random.Generator, sample: int = 20_000):
        self.ratio = UnitHistogram()
        self.reasoning = IntHistogram()
        self.answer = IntHistogram()
        self.rows = Reservoir(sample, rng)

    def add(self, input_tokens: np.ndarray, output_tokens: np.ndarray, reasoning_tokens: np.ndarray) -> None:
        out = np.asarray(output_tokens, np.int64)
        reason = np.asarray(reasoning_tokens, np.int64)
        self.ratio.add(reasoning_ratio(reason, out))
        self.reasoning.add(reason)
        self.answer.add(out - reason)
        self.rows.add(
            input_tokens=np.asarray(input_tokens, np.int64),
            reasoning_tokens=reason,
            answer_tokens=out - reason,
        )

    def result(self) -> dict:
        s = self.rows.sample()
        ratio = self.ratio.summary()
        with np.errstate(invalid="ignore", divide="ignore"):
            out = s["reasoning_tokens"] + s["answer_tokens"]
            sample_ratio = np.where(out > 0, s["reasoning_tokens"] / np.maximum(out, 1), np.nan)
        ok = ~np.isnan(sample_ratio)
        bc = ratio.get("bimodality_coefficient", math.nan)
        return {
            "ratio": ratio,
            "bimodal": bool(bc > BIMODAL_THRESHOLD) if not math.isnan(bc) else None,
            "reasoning_tokens": self.reasoning.summary(),
            "answer_tokens": self.answer.summary(),
            "spearman_reasoning_answer_sampled": spearman(s["reasoning_tokens"], s["answer_tokens"]),
            "spearman_input_ratio_sampled": spearman(s["input_tokens"][ok], sample_ratio[ok]),
            "series": {"ratio_hist": self.ratio, "pairs": s},
        }
