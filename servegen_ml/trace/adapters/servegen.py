"""``servegen``: a ServeGen client-pool directory (``chunk-N-trace.csv`` + ``chunk-N-dataset.json``).

The pool holds per-client statistics, not requests; reading it samples a
request-level trace for ``[start_s, start_s + duration_s)`` with ``seed``
through :func:`servegen_ml.pool.sample_servegen_pool` (see that module for
the sampling rules). The result is validated like any other trace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from servegen_ml.errors import UserError


def is_pool_directory(path: Path) -> bool:
    return path.is_dir() and any(path.glob("chunk-*-trace.csv"))


def sample_pool(
    path: Path, start_s: float | None, duration_s: float | None, seed: int | None
) -> pd.DataFrame:
    if duration_s is None:
        raise UserError(f"{path}: a ServeGen pool is sampled, not read: give duration_s (and start_s, seed)")
    from servegen_ml.pool import sample_servegen_pool

    rng = np.random.default_rng(0 if seed is None else int(seed))
    return sample_servegen_pool(path, float(start_s or 0.0), float(duration_s), rng)
