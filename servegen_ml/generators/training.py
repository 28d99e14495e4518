"""Fit a generator from a resolved ``train`` config (``servegen-ml train``; the library route for the same).

``cfg.model`` is instantiated with Hydra (``_target_`` in ``configs/model/*.yaml``);
a generator whose constructor takes ``trainer`` also receives ``cfg.trainer``
as a plain dict. With ``split`` in (0, 1) the generator is fitted on the
earliest ``split`` fraction of the trace's time span and the per-event NLL of
each part on the rest (held out) goes to ``OUT/metrics.json``. A ServeGen
pool directory with ``model=parametric`` loads as a ready-made fit unless
``+data.duration_s`` asks for a sampled trace. A generator with ``fit_chunks``
(naive, parametric) fits a trace file chunk by chunk of ``chunk_rows`` rows,
in memory bounded by clients x windows and open conversations, when
``split=0`` and the trace is sorted by time; a generator with ``fit_file``
(neural) streams a time-sorted trace file itself when ``split=0``
(conversations included); otherwise the trace is read into memory.
"""

from __future__ import annotations

import inspect
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from servegen_ml.conversations.last_turns import last_turns_of_file
from servegen_ml.core.errors import UserError
from servegen_ml.core.outputs import check_checkpoint_dir
from servegen_ml.generators.base import Generator, summarize_log_prob
from servegen_ml.pool import is_servegen_pool
from servegen_ml.trace.io import DEFAULT_CHUNK_ROWS, TraceReader

METRICS_FILE = "metrics.json"


def build_generator(cfg: DictConfig) -> Generator:
    """The unfitted generator of ``cfg.model`` (plus ``cfg.trainer`` where it takes one)."""
    target = get_class(cfg.model._target_)
    extra = {}
    if "trainer" in inspect.signature(target).parameters and cfg.get("trainer") is not None:
        extra["trainer"] = OmegaConf.to_container(cfg.trainer, resolve=True)
    # Partial first: the trainer dict holds `_target_`s of its own, built only when training starts.
    return instantiate(cfg.model, _partial_=True, _convert_="all")(**extra)


def time_split(trace: pd.DataFrame, split: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(earlier ``split`` fraction of the time span, the rest); ``split=0`` keeps everything for training."""
    if not 0.0 <= split < 1.0:
        raise UserError(f"split={split}: the training fraction of the time span must be in [0, 1)")
    if split == 0.0:
        return trace, trace.iloc[:0]
    t = trace["timestamp"].to_numpy(np.float64)
    cut_s = t.min() + split * (t.max() - t.min())
    train = t < cut_s
    if train.sum() < 2 or (~train).sum() < 1:
        raise UserError(
            f"split={split} leaves {int(train.sum())} training and {int((~train).sum())} held-out requests"
        )
    return trace[train].reset_index(drop=True), trace[~train].reset_index(drop=True)


def fit_from_config(cfg: DictConfig, step: Callable[[str], None] = lambda name: None) -> dict[str, Any]:
    """Fit, save the checkpoint to ``cfg.out`` and return the metrics (held-out NLL when split > 0).

    ``step(name)`` is called as each long step starts (a progress bar's hook).
    """
    from servegen_ml.pool import read_source

    # Before any work: out= must be new, empty or (with overwrite=true) a checkpoint.
    out = check_checkpoint_dir(str(cfg.out), bool(cfg.get("overwrite", False)))
    gen = build_generator(cfg)
    path = Path(str(cfg.data.path))
    options = {k: v for k, v in cfg.data.items() if k not in ("path", "format", "skip_bad_rows")}
    split = float(cfg.get("split", 0.0) or 0.0)
    started = time.perf_counter()
    metrics: dict[str, Any] = {"generator": gen.kind, "data": str(path), "split": split}
    if _loads_pool_directly(gen, path, cfg.data.format, options):
        if split:
            raise UserError(
                f"split={split}: a ServeGen pool holds no requests to hold out; sample one with +data.duration_s"
            )
        step("load ServeGen pool")
        gen = type(gen).from_pool(path)
        metrics["fit"] = "ServeGen client pool loaded as a ready-made fit"
    elif streams(gen, path, str(cfg.data.format), split) and (
        rows := _fit_streamed(gen, path, cfg, options, step)
    ):
        metrics["train_events"] = rows
    elif streams_file(gen, path, str(cfg.data.format), split) and (
        rows := _fit_file(gen, path, cfg, options, step)
    ):
        metrics["train_events"] = rows
    else:
        step("read trace")
        trace = read_source(
            path, format=str(cfg.data.format), skip_bad_rows=bool(cfg.data.skip_bad_rows), **options
        )
        train, held_out = time_split(trace, split)
        step(f"fit on {len(train):,} requests")
        gen.fit(train)
        metrics["train_events"] = int(len(train))
        if len(held_out):
            step(f"score {len(held_out):,} held-out requests")
            metrics["held_out_events"] = int(len(held_out))
            metrics["held_out_start_s"] = float(held_out["timestamp"].iloc[0])
            metrics["held_out"] = summarize_log_prob(gen.log_prob(held_out))
    metrics["fit_seconds"] = round(time.perf_counter() - started, 3)
    step("save")
    gen.save(out, {METRICS_FILE: json.dumps(metrics, indent=2, sort_keys=True) + "\n"})
    return metrics


class _NeedsWholeTrace(Exception):
    """The trace turned out to need the in-memory fit (the message says why)."""


def streams(gen: Generator, path: Path, data_format: str, split: float) -> bool:
    """Whether ``train`` fits ``gen`` chunk by chunk: it can (``fit_chunks``), the input is a file, no split."""
    return hasattr(gen, "fit_chunks") and split == 0.0 and path.is_file() and data_format != "servegen"


def streams_file(gen: Generator, path: Path, data_format: str, split: float) -> bool:
    """Whether ``train`` lets ``gen`` stream the trace file itself (``fit_file``): a file, no split."""
    return hasattr(gen, "fit_file") and split == 0.0 and path.is_file() and data_format != "servegen"


def _fit_file(gen: Generator, path: Path, cfg: DictConfig, options: dict, step) -> int:
    """``gen.fit_file`` on the trace file; the rows fitted, or 0 after a warning when it must be sorted in memory."""
    from servegen_ml.neural.data.events import UnsortedChunksError

    step("read and fit trace (streamed)")
    try:
        gen.fit_file(
            path,
            format=str(cfg.data.format),
            chunk_rows=int(cfg.get("chunk_rows", DEFAULT_CHUNK_ROWS)),
            skip_bad_rows=bool(cfg.data.skip_bad_rows),
            **options,
        )
    except UnsortedChunksError as why:
        warnings.warn(f"{path}: read into memory for training: {why}", stacklevel=2)
        return 0
    return int(gen.rows_fitted_)


def _fit_streamed(gen: Generator, path: Path, cfg: DictConfig, options: dict, step) -> int:
    """Fit from the trace file chunk by chunk; the rows fitted, or 0 after a warning when it needs memory.

    A trace whose rows go back in time across chunks is then read whole (and sorted) instead.
    """
    reader = TraceReader(
        path,
        str(cfg.data.format),
        int(cfg.get("chunk_rows", DEFAULT_CHUNK_ROWS)),
        bool(cfg.data.skip_bad_rows),
        **options,
    )
    step("mark each conversation's last turn (first pass)")
    last_turns = last_turns_of_file(
        path,
        str(cfg.data.format),
        int(cfg.get("chunk_rows", DEFAULT_CHUNK_ROWS)),
        bool(cfg.data.skip_bad_rows),
        **options,
    )
    rows = 0

    def chunks():
        nonlocal rows
        for chunk in reader:
            if reader.report.globally_unsorted:
                raise _NeedsWholeTrace("rows go back in time across chunks, so it is sorted in memory")
            rows += len(chunk)
            yield chunk
        report = reader.finish()
        if report.rows_dropped:
            warnings.warn(report.describe(), stacklevel=2)

    step("read and fit trace (streamed)")
    try:
        gen.fit_chunks(chunks(), last_turns)
    except _NeedsWholeTrace as why:
        warnings.warn(f"{path}: read into memory for training: {why}", stacklevel=2)
        return 0
    return rows


def _loads_pool_directly(gen: Generator, path: Path, data_format: str, options: dict) -> bool:
    pool_input = data_format == "servegen" or (data_format == "auto" and is_servegen_pool(path))
    return pool_input and hasattr(type(gen), "from_pool") and options.get("duration_s") is None
