"""A streamed neural fit of a trace file, bounded to a few training steps: where the time goes, and the weights.

    python benchmarks/neural_fit.py TRACE [--max-steps 50] [--threads 1] [--early-stopping]

Runs ``NeuralGenerator(trainer=...).fit(TRACE)`` as ``train model=neural`` does
(the event store and statistics built in full, the point process stopped after
``--max-steps`` optimizer steps; with conversation ids, the conversation heads
then train one epoch), timing the point process's training batches with
``benchmarks/neural_train.py``'s ``BatchTimer``. Prints one JSON line: wall
time, batch time, events trained, events/s, the rest (store, statistics,
conversation heads, population) and a SHA-256 of the point process's weights
(and of the conversation heads' when there are any), to check that a change
leaves the trained model the same. Run it under ``/usr/bin/time -v`` for the
peak resident set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def digest(weights: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(k.encode())
        h.update(np.ascontiguousarray(np.asarray(weights[k])).tobytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--early-stopping", action="store_true", help="keep early stopping (default: off)")
    args = parser.parse_args()

    import torch
    from neural_train import BatchTimer

    from servegen_ml.generators.neural import NeuralGenerator

    torch.set_num_threads(args.threads)
    callbacks = {"batch_timer": {"_target_": "neural_train.BatchTimer"}}
    if not args.early_stopping:
        callbacks["early_stopping"] = None
    trainer = {
        "max_epochs": 1,
        "max_steps": args.max_steps,
        "min_steps": 0,
        "num_threads": args.threads,
        "default_root_dir": None,
        "enable_progress_bar": False,
        "callbacks": callbacks,
    }
    started = time.perf_counter()
    gen = NeuralGenerator(trainer=trainer).fit(args.trace)
    wall = time.perf_counter() - started
    out = {
        "rows": gen.rows_fitted_,
        "wall_s": round(wall, 1),
        "batch_s": round(BatchTimer.seconds, 1),
        "batch_events": BatchTimer.events,
        "events_per_s": round(BatchTimer.events / max(BatchTimer.seconds, 1e-9)),
        "other_s": round(wall - BatchTimer.seconds, 1),
        "weights_sha256": digest(gen.state_.weights),
    }
    if gen.conversations_ is not None:
        out["conversation_heads_sha256"] = digest(gen.conversations_.weights)
        out["conversation_training"] = gen.conversations_.meta["training"]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
