"""Cut a generation span into segments on a fixed window grid of the learned timeline."""

from __future__ import annotations

import numpy as np


def window_segments(
    start_s: float, duration_s: float, window_s: float, step_s: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Segment bounds ``[start, end)`` (timeline seconds) covering ``[start_s, start_s + duration_s)``.

    Inner boundaries fall on multiples of ``window_s``, so each segment lies in one
    window; with ``step_s`` the windows are cut further every ``step_s`` seconds
    after ``start_s`` (used to follow a rate curve inside a window).
    """
    end_s = start_s + duration_s
    first = np.floor(start_s / window_s)
    last = np.ceil(end_s / window_s)
    grid = np.arange(first, last + 1) * window_s
    if step_s:
        grid = np.union1d(grid, start_s + np.arange(0.0, duration_s, step_s))
    inner = grid[(grid > start_s) & (grid < end_s)]
    bounds = np.concatenate([[start_s], inner, [end_s]])
    return bounds[:-1], bounds[1:]
