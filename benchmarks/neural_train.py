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
    import lightning as L
    import torch

    from servegen_ml.generators.neural import NeuralGenerator
    from servegen_ml.neural.data.chunks import split_segments
    from servegen_ml.neural.data.datamodule import EventDataModule
    from servegen_ml.neural.data.events import store_from_frame
    from servegen_ml.neural.data.normalizers import fit_normalizers
    from servegen_ml.neural.training.fit import ARCHITECTURE_KEYS
    from servegen_ml.neural.training.lightning_module import TPPLightningModule
    from servegen_ml.trace.io import read_trace

    torch.set_num_threads(threads)
    s = NeuralGenerator().config_.to_dict()
    if max_spikes is not None:
        s["max_spikes"] = max_spikes
    store = store_from_frame(read_trace(path))
    split_s = store.window_start_s + 0.9 * (store.window_end_s - store.window_start_s)
    norm = fit_normalizers(store, split_s, s["max_spikes"], s["min_spike_share"])
    model = {
        "n_clients": len(store.client_ids),
        "layout": store.layout.to_dict(),
        "spikes": norm.spikes,
        **{k: s[k] for k in ARCHITECTURE_KEYS},
    }
    module = TPPLightningModule(model, lr=s["lr"])
    module.tpp.set_normalizers(norm)
    train, _ = split_segments(store, split_s)
    data = EventDataModule(
        store,
        train,
        None,
        s["lanes"],
        s["chunk_len"],
        0,
        s["cold_starts_per_client"],
        s["cold_starts_per_hour"],
    )
    timer = _EpochTimer()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, max_steps=max_steps or -1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return {
        "threads": threads,
        "events": timer.events,
        "seconds": timer.seconds,
        "events_per_s": timer.events / timer.seconds,
    }


class _EpochTimer:
    """Target events and wall time from the first training batch to the last one (data loading included)."""

    def __new__(cls):
        from lightning.pytorch.callbacks import Callback

        class Timer(Callback):
            events, seconds, _t0 = 0, 0.0, None

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if self._t0 is None:
                    self._t0 = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                self.seconds = time.perf_counter() - self._t0
                self.events += int(batch["mask"].sum())

        return Timer()


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
