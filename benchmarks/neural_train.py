"""CPU training throughput of the default neural model (events per second of one training epoch).

    python benchmarks/neural_train.py [--hours 2] [--start-s 0] [--epochs 1] [--threads 1 2] [--max-steps 0]
                                      [--max-spikes N]

Builds a training trace by sampling the ServeGen language m-large pool
(``--hours`` from ``--start-s``, cached under .bench/), then for each thread
count trains the default model (configs/model/neural.yaml settings) and times
the training batches with their data loading (a Lightning callback; store
building, validation and the population fit excluded). Prints one Markdown row per thread count.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import Callback

POOL = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "servegen" / "language" / "m-large"
)
CACHE = Path(__file__).resolve().parents[1] / ".bench"


def training_trace(hours: float, start_s: float) -> Path:
    from servegen_ml.pool import sample_servegen_pool
    from servegen_ml.trace.io import write_trace

    path = CACHE / f"mlarge_{start_s:g}s_{hours:g}h.parquet"
    if not path.is_file():
        trace = sample_servegen_pool(POOL, start_s, hours * 3600.0, np.random.default_rng(0))
        write_trace(trace, path)
    return path


def measure(path: Path, threads: int, epochs: int, max_steps: int, max_spikes: int | None) -> dict:
    """Train the default model on ``path`` through ``NeuralGenerator.fit`` (streamed, as the CLI
    does), timing the training batches with :class:`BatchTimer`."""
    import torch

    from servegen_ml.generators.neural import NeuralGenerator

    torch.set_num_threads(threads)
    BatchTimer.events, BatchTimer.seconds, BatchTimer.start = 0, 0.0, None
    trainer = {
        "max_epochs": epochs,
        "max_steps": max_steps or -1,
        "num_threads": threads,
        "default_root_dir": None,
        "enable_progress_bar": False,
        "callbacks": {"batch_timer": {"_target_": f"{__name__}.BatchTimer"}, "early_stopping": None},
    }
    config = {} if max_spikes is None else {"max_spikes": max_spikes}
    NeuralGenerator(trainer=trainer, **config).fit(path)
    return {
        "threads": threads,
        "events": BatchTimer.events,
        "seconds": BatchTimer.seconds,
        "events_per_s": BatchTimer.events / max(BatchTimer.seconds, 1e-9),
    }


class BatchTimer(Callback):
    """Target events (class-wide: the trainer builds its own instance from ``_target_``) and wall
    time from the first training batch to the last one, data loading included."""

    events, seconds, start = 0, 0.0, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if BatchTimer.start is None:
            BatchTimer.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        BatchTimer.seconds = time.perf_counter() - BatchTimer.start
        BatchTimer.events += int(batch["mask"].sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--start-s", type=float, default=0.0)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: whole epochs)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument(
        "--max-spikes", type=int, default=None, help="override the default model's spike vocabulary"
    )
    args = ap.parse_args()
    path = training_trace(args.hours, args.start_s)
    print("| torch threads | events | train seconds | events/s |\n|---|---|---|---|")
    for threads in args.threads:
        r = measure(path, threads, args.epochs, args.max_steps, args.max_spikes)
        print(
            f"| {r['threads']} | {r['events']:,} | {r['seconds']:.1f} | {r['events_per_s']:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
