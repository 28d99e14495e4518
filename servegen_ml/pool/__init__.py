"""Client pools: per-client windowed arrival and length statistics (ServeGen's representation).

* :class:`ClientPool` — the columnar tables and their Parquet/JSON files.
* :func:`fit_client_pool` — fit one from a request-level trace.
* :func:`load_servegen_pool` — read ServeGen's published pool files (cached).
* :func:`sample_pool` / :func:`sample_servegen_pool` — vectorized request sampling.
* :func:`read_source` / :func:`convert_source` — a trace file, or a ServeGen pool sampled.
"""

from __future__ import annotations

from servegen_ml.pool.fit import fit_client_pool
from servegen_ml.pool.sampling import sample_pool
from servegen_ml.pool.servegen import is_servegen_pool, load_servegen_pool
from servegen_ml.pool.source import convert_source, read_source, sample_servegen_pool
from servegen_ml.pool.table import ClientPool

__all__ = [
    "ClientPool",
    "convert_source",
    "fit_client_pool",
    "is_servegen_pool",
    "load_servegen_pool",
    "read_source",
    "sample_pool",
    "sample_servegen_pool",
]
