"""Traces from any source: a trace file, or a ServeGen client-pool directory, which is sampled.

A ServeGen pool (``chunk-N-trace.csv`` + ``chunk-N-dataset.json``) holds
per-client statistics, not requests; reading one samples a request-level trace
for ``[start_s, start_s + duration_s)`` with ``seed`` through
:func:`servegen_ml.pool.sample_servegen_pool` (see that module for the sampling
rules). The result is validated like any other trace. This lives above the
trace layer because sampling needs the pool; :mod:`servegen_ml.trace.io`
reads files only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from servegen_ml.core.spec import GenerationSpec
from servegen_ml.pool.sampling import sample_pool
from servegen_ml.pool.servegen import load_servegen_pool
from servegen_ml.trace.convert import convert_trace
from servegen_ml.trace.io import DEFAULT_CHUNK_ROWS, read_trace, resolve_format
from servegen_ml.trace.summary import TraceSummary
from servegen_ml.trace.validate import ValidationReport, validate_trace
from servegen_ml.trace.writers import output_container, write_trace

POOL_OPTIONS = ("start_s", "duration_s", "seed")


def sample_servegen_pool(
    directory: str | Path, start_s: float, duration_s: float, rng: np.random.Generator
) -> pd.DataFrame:
    """A request-level canonical trace sampled from a ServeGen pool over ``[start_s, start_s + duration_s)``.

    Timestamps run from 0 (= ``start_s`` of the pool's timeline); every client
    with length distributions is included at its published rates.
    """
    pool = load_servegen_pool(directory)
    return sample_pool(pool, GenerationSpec(duration_s=float(duration_s), start_s=float(start_s)), rng)


def _sample_directory(
    path: Path, start_s: float | None, duration_s: float | None, seed: int | None
) -> pd.DataFrame:
    if duration_s is None:
        raise ValueError(f"{path}: a ServeGen pool is sampled, not read: give duration_s (and start_s, seed)")
    rng = np.random.default_rng(0 if seed is None else int(seed))
    return sample_servegen_pool(path, float(start_s or 0.0), float(duration_s), rng)


def read_source(
    path: str | Path,
    format: str = "auto",
    skip_bad_rows: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    **options,
) -> pd.DataFrame:
    """:func:`~servegen_ml.trace.io.read_trace`, or for a ServeGen pool a sampled trace.

    ``format="servegen"`` (or a pool directory with ``auto``) takes ``start_s``,
    ``duration_s`` and ``seed``.
    """
    path = Path(path)
    if resolve_format(path, format) != "servegen":
        return read_trace(path, format, skip_bad_rows, chunk_rows, **options)
    pool_options = {k: options.pop(k, None) for k in POOL_OPTIONS}
    if options:
        raise ValueError(f"unknown option(s) {sorted(options)} for format 'servegen'")
    trace, _ = validate_trace(_sample_directory(path, **pool_options), str(path), skip_bad_rows)
    return trace


def convert_source(
    path: str | Path,
    out: str | Path,
    format: str = "auto",
    skip_bad_rows: bool = False,
    start_s: float | None = None,
    duration_s: float | None = None,
    seed: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    **adapter_options,
) -> tuple[dict, ValidationReport | None]:
    """:func:`~servegen_ml.trace.convert.convert_trace`, or for a ServeGen pool its sampled span written out.

    For a pool, ``start_s``/``duration_s``/``seed`` choose the sampled span.
    """
    path, out = Path(path), Path(out)
    output_container(out)
    if resolve_format(path, format) != "servegen":
        return convert_trace(
            path, out, format, skip_bad_rows, start_s, duration_s, chunk_rows=chunk_rows, **adapter_options
        )
    trace = read_source(path, "servegen", skip_bad_rows, start_s=start_s, duration_s=duration_s, seed=seed)
    write_trace(trace, out)
    return TraceSummary().add(trace).result(), None
