"""Multimodal statistics: items per request, tokens per item, text vs media tokens, media token rate.

A modality is present when its list column (``image_tokens``, ...) is in the
trace; each list holds the tokens of each item, so its length is the item count.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from servegen_ml.stats.dependence import spearman
from servegen_ml.stats.histogram import IntHistogram
from servegen_ml.stats.sampling import Reservoir
from servegen_ml.stats.windows import WindowSeries
from servegen_ml.trace.schema import LIST_COLUMNS, list_lengths, list_values

MEDIA_RATE_LADDER_S = (600.0, 3600.0, 86400.0)


def media_columns(columns) -> list[str]:
    """The list columns (``image_tokens``, ...) present."""
    return [c for c in LIST_COLUMNS if c in set(columns)]


def modality(column: str) -> str:
    return column.removesuffix("_tokens")


def media_tokens_per_request(series: pd.Series) -> np.ndarray:
    """Sum of item tokens of each row (0 for an empty list)."""
    counts = list_lengths(series)
    values = list_values(series)
    ends = np.cumsum(counts)
    totals = np.concatenate([[0], np.cumsum(values)])
    return totals[ends] - totals[ends - counts]


class MultimodalAccumulator:
    """Streaming multimodal statistics.

    Exact: item-count and media-token totals, items per request below 2048
    items, per-window media token sums (60 s, coarsened for long spans), the
    Pearson correlation of log1p(text) and log1p(media) tokens. Approximate:
    tokens-per-item quantiles above 2048 (log bins), the Spearman correlation and
    scatter (uniform sample of ``sample`` requests).
    """

    def __init__(
        self,
        columns: list[str],
        t0_s: float,
        rng: np.random.Generator,
        has_text: bool,
        sample: int = 20_000,
        width_s: float = 60.0,
    ):
        self.columns = columns
        self.has_text = has_text
        self.items = {c: IntHistogram() for c in columns}
        self.tokens_per_item = {c: IntHistogram() for c in columns}
        self.requests_with = {c: 0 for c in columns}
        self.media_per_request = IntHistogram()
        self.rate = WindowSeries(width_s, tuple(columns) + ("text",), t0_s, MEDIA_RATE_LADDER_S, 1 << 20)
        self.pairs = Reservoir(sample, rng)
        self.pearson_sums = np.zeros(6)  # n, sx, sy, sxx, syy, sxy of log1p(text), log1p(media)
        self.requests = 0
        self.t_last = -math.inf

    def add(self, t_s: np.ndarray, chunk: pd.DataFrame) -> None:
        media_total = np.zeros(len(chunk), dtype=np.int64)
        per_column = {}
        for c in self.columns:
            counts = list_lengths(chunk[c])
            self.items[c].add(counts)
            self.tokens_per_item[c].add(list_values(chunk[c]))
            self.requests_with[c] += int((counts > 0).sum())
            per_column[c] = media_tokens_per_request(chunk[c])
            media_total += per_column[c]
        self.media_per_request.add(media_total)
        text = (
            chunk["text_tokens"].to_numpy(np.int64)
            if self.has_text
            else chunk["input_tokens"].to_numpy(np.int64) - media_total
        )
        self.rate.add(t_s, text=text, **per_column)
        x, y = np.log1p(text), np.log1p(media_total)
        self.pearson_sums += [len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()]
        self.pairs.add(text_tokens=text, media_tokens=media_total)
        self.requests += len(chunk)
        self.t_last = max(self.t_last, float(np.max(t_s)))

    def _pearson_log1p(self) -> float:
        n, sx, sy, sxx, syy, sxy = self.pearson_sums
        cov, vx, vy = sxy / n - sx * sy / n**2, sxx / n - (sx / n) ** 2, syy / n - (sy / n) ** 2
        return float(cov / math.sqrt(vx * vy)) if vx > 0 and vy > 0 else math.nan

    def result(self) -> dict:
        sample = self.pairs.sample()
        per_mod = {
            modality(c): {
                "share_of_requests_with_items": self.requests_with[c] / max(self.requests, 1),
                "items_per_request": self.items[c].summary((0.5, 0.9, 0.99)),
                "tokens_per_item": self.tokens_per_item[c].summary((0.5, 0.9, 0.99)),
            }
            for c in self.columns
        }
        sums = self.rate.full(self.t_last)
        return {
            "modalities": per_mod,
            "media_tokens_per_request": self.media_per_request.summary(),
            "text_vs_media": {
                "pearson_log1p": self._pearson_log1p(),
                "spearman_sampled": spearman(sample["text_tokens"], sample["media_tokens"]),
                "sample_size": int(len(sample["text_tokens"])),
            },
            "series": {
                "items": self.items,
                "tokens_per_item": self.tokens_per_item,
                "rate_width_s": self.rate.width_s,
                "media_tokens_per_s": {modality(c): sums[c] / self.rate.width_s for c in self.columns},
                "text_tokens_per_s": sums["text"] / self.rate.width_s,
                "pairs": sample,
            },
        }
