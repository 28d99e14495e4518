"""Add the model's own rate curves to existing neural checkpoints (weights unchanged).

    python scripts/calibrate_neural.py checkpoints/multimodal/neural [more checkpoint dirs ...] [--force]

Checkpoints written before ``model_rate_curves`` existed calibrate constant and
curve rate targets with a pilot run at every sample call. This measures the
curves once (:func:`servegen_ml.neural.sampling.generate.measure_rate_curves`, as
``NeuralGenerator.fit`` now does, with the same seed) and rewrites the
checkpoint atomically through the generator's ``save``; files of the directory
that ``save`` does not write (``metrics.json``) are carried over. A checkpoint
that already has the curves is left alone unless ``--force``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from servegen_ml.core.atomic import atomic_dir
from servegen_ml.generators.base import load_generator
from servegen_ml.generators.neural import NeuralGenerator
from servegen_ml.neural.sampling.generate import measure_rate_curves
from servegen_ml.neural.state import MODEL_FILE


def calibrate(directory: Path, force: bool = False) -> dict:
    gen = load_generator(directory)
    if not isinstance(gen, NeuralGenerator):
        raise SystemExit(f"{directory}: holds a {gen.kind!r} generator, not a neural one")
    state, s = gen.state_, gen.config_
    if state.model_rate_curves is not None and not force:
        return {"checkpoint": str(directory), "skipped": "already has model_rate_curves (use --force)"}
    weights_digest = hashlib.sha256((directory / MODEL_FILE).read_bytes()).hexdigest()
    t0 = time.perf_counter()
    rng = np.random.default_rng(s.seed)  # as NeuralGenerator.fit
    state.model_rate_curves = measure_rate_curves(
        state, gen._numpy_tpp, rng, s.segment_events, s.warmup_events
    )
    seconds = time.perf_counter() - t0
    with atomic_dir(directory) as tmp:
        written = gen.save(tmp)
        for extra in sorted({p.name for p in directory.iterdir()} - {p.name for p in written.iterdir()}):
            src = directory / extra
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / extra)
    if hashlib.sha256((directory / MODEL_FILE).read_bytes()).hexdigest() != weights_digest:
        raise RuntimeError(f"{directory}: {MODEL_FILE} changed on save")
    model, empirical = state.model_rate_curves.sum(0), state.rate_curves.sum(0)
    width = np.clip(state.span_s - np.arange(len(model)) * state.rate_bin_s, 0.0, state.rate_bin_s)
    return {
        "checkpoint": str(directory),
        "measure_seconds": round(seconds, 1),
        "model_requests_per_pass": round(float((model * width).sum())),
        "model_mean_rate": round(float((model * width).sum() / state.span_s), 3),
        "trace_mean_rate": round(float((empirical * width).sum() / state.span_s), 3),
        "model_to_trace_rate_per_bin_min_median_max": [
            round(float(q), 3) for q in np.quantile(model / np.maximum(empirical, 1e-12), [0.0, 0.5, 1.0])
        ],
        "checkpoint_bytes": sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--force", action="store_true", help="measure again where the curves are already stored")
    args = ap.parse_args()
    for directory in args.checkpoints:
        print(json.dumps(calibrate(directory, args.force)), flush=True)


if __name__ == "__main__":
    main()
