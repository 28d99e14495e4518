"""Client pools: per-client windowed arrival and length statistics (ServeGen's representation).

* :class:`ClientPool` — the columnar tables and their Parquet/JSON files.
* :func:`fit_client_pool` — fit one from a request-level trace.
* :func:`load_servegen_pool` — read ServeGen's published pool files (cached).
* :func:`sample_pool` / :func:`sample_servegen_pool` — vectorized request sampling.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from servegen_ml.generators.spec import GenerationSpec
from servegen_ml.pool.fit import fit_client_pool
from servegen_ml.pool.sampling import sample_pool
from servegen_ml.pool.servegen import is_servegen_pool, load_servegen_pool
from servegen_ml.pool.table import ClientPool


def sample_servegen_pool(
    directory: str | os.PathLike, start_s: float, duration_s: float, rng: np.random.Generator
) -> pd.DataFrame:
    """A request-level canonical trace sampled from a ServeGen pool over ``[start_s, start_s + duration_s)``.

    Timestamps run from 0 (= ``start_s`` of the pool's timeline); every client
    with length distributions is included at its published rates.
    """
    pool = load_servegen_pool(directory)
    return sample_pool(pool, GenerationSpec(duration_s=float(duration_s), start_s=float(start_s)), rng)


__all__ = [
    "ClientPool",
    "fit_client_pool",
    "is_servegen_pool",
    "load_servegen_pool",
    "sample_pool",
    "sample_servegen_pool",
]
