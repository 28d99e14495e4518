"""Cut a generation span into segments on a fixed window grid of the learned timeline."""

from __future__ import annotations

import numpy as np


def window_segments(start_s: float, duration_s: float, window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Segment bounds ``[start, end)`` (timeline seconds) covering ``[start_s, start_s + duration_s)``.

    Inner boundaries fall on multiples of ``window_s``, so each segment lies in one window.
    """
    end_s = start_s + duration_s
    first = np.floor(start_s / window_s)
    last = np.ceil(end_s / window_s)
    grid = np.arange(first, last + 1) * window_s
    inner = grid[(grid > start_s) & (grid < end_s)]
    bounds = np.concatenate([[start_s], inner, [end_s]])
    return bounds[:-1], bounds[1:]
