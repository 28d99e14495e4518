"""Neural sampling throughput: one hour at an aggregate 100 req/s over the m-large client mix, and load time.

    python benchmarks/neural_sample.py [--train-hours 24] [--max-steps 1400] [--repeats 3] [--rate 100|natural]
    python benchmarks/neural_sample.py --checkpoint checkpoints/language/neural --hours 4 --workers 2

Training trace: the ServeGen language m-large pool sampled for ``--train-hours``
from t = 0 (about 100 clients in a day, a heavy-tailed mix), fitted with the
default model (configs/model/neural.yaml) for ``--max-steps`` optimizer steps
(about one epoch over a day) and cached under .bench/ (a checkpoint cached before
the rate level existed is refused: delete it to retrain). Sampling speed depends
on the training only through the rates the model learned. Then:

* load time: ``load_generator`` in this process, and the wall time of a fresh
  ``python -c`` that imports servegen_ml, loads the checkpoint and exits;
* sampling: ``rate=--rate`` (a constant, or ``natural``), ``clients=all``, ``duration_s=3600``
  from ``--start-s``; requests per second of wall time, best and median of
  ``--repeats`` runs.

``--checkpoint DIR`` samples an existing checkpoint instead (a shipped one, say).
``--workers N`` measures what ``servegen-ml generate workers=N`` does instead of one
in-process ``sample``: ``--hours`` of rows streamed in the generator's time units by N
worker processes (units are an hour for the neural generator, so one hour keeps one
worker busy), counted as they arrive, not written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "data" / "traces" / "servegen" / "language" / "m-large"
CACHE = ROOT / ".bench"


def checkpoint(train_hours: float, max_steps: int) -> Path:
    from servegen_ml.generators.neural import NeuralGenerator
    from servegen_ml.pool import sample_servegen_pool
    from servegen_ml.trace.io import write_trace

    ck = CACHE / f"neural_mlarge_{train_hours:g}h_{max_steps}steps"
    if (ck / "manifest.json").is_file():
        return ck
    trace_path = CACHE / f"mlarge_0s_{train_hours:g}h.parquet"
    if not trace_path.is_file():
        write_trace(
            sample_servegen_pool(POOL, 0.0, train_hours * 3600.0, np.random.default_rng(0)), trace_path
        )
    trainer = {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "max_steps": max_steps, "num_threads": 1,
               "default_root_dir": None, "num_sanity_val_steps": 0, "limit_val_batches": 20,
               "val_check_interval": 200}  # fmt: skip
    started = time.perf_counter()
    gen = NeuralGenerator(trainer=trainer).fit(trace_path)
    print(
        f"trained on {trace_path.name} in {time.perf_counter() - started:.0f} s: {gen.state_.training}",
        flush=True,
    )
    gen.save(ck)
    return ck


def load_seconds(ck: Path) -> tuple[float, float]:
    from servegen_ml.generators.base import load_generator

    t0 = time.perf_counter()
    load_generator(ck)
    in_process = time.perf_counter() - t0
    code = f"from servegen_ml.generators.base import load_generator; load_generator({str(ck)!r})"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return in_process, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-hours", type=float, default=24.0)
    ap.add_argument("--max-steps", type=int, default=1400)
    ap.add_argument("--start-s", type=float, default=12 * 3600.0)
    ap.add_argument("--rate", default="100", help="target: a constant req/s (default 100) or natural")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkpoint", type=Path, help="sample this checkpoint instead of training one")
    ap.add_argument("--workers", type=int, default=0, help="N >= 1: stream with N worker processes")
    ap.add_argument("--hours", type=float, default=1.0, help="span sampled (with --workers)")
    args = ap.parse_args()
    from servegen_ml.core.spec import GenerationSpec
    from servegen_ml.generators.base import load_generator

    ck = args.checkpoint.resolve() if args.checkpoint else checkpoint(args.train_hours, args.max_steps)
    in_process, fresh = load_seconds(ck)
    gen = load_generator(ck)
    duration_s = 3600.0 * (args.hours if args.workers else 1.0)
    runs = []
    for seed in range(args.repeats):
        spec = GenerationSpec.from_values(
            duration_s=duration_s, start_s=args.start_s, rate=args.rate, clients="all", seed=seed
        )
        t0 = time.perf_counter()
        if args.workers:
            blocks = [
                b.frame["client_id"] for b in gen.generate_blocks(spec, None, args.workers, checkpoint=ck)
            ]
            clients = pd.concat(blocks) if blocks else pd.Series([], dtype=object)
        else:
            clients = gen.sample(spec, np.random.default_rng(seed))["client_id"]
        seconds = time.perf_counter() - t0
        runs.append((len(clients) / seconds, len(clients), seconds, clients.nunique()))
    rates = [r[0] for r in runs]
    result = {
        "checkpoint": str(ck),
        "workers": args.workers or "in process",
        "hours": duration_s / 3600.0,
        "checkpoint_bytes": sum(p.stat().st_size for p in ck.iterdir()),
        "clients_in_checkpoint": len(gen.clients),
        "active_clients_in_sample": runs[0][3],
        "requests": runs[0][1],
        "sample_seconds": [round(r[2], 3) for r in runs],
        "requests_per_s_best": round(max(rates)),
        "requests_per_s_median": round(statistics.median(rates)),
        "load_seconds_in_process": round(in_process, 3),
        "load_seconds_fresh_process_with_imports": round(fresh, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
