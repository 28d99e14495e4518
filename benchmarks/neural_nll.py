"""Held-out NLL per event (nats; time and each mark) of the naive, parametric and neural generators.

    python benchmarks/neural_nll.py [--datasets mooncake deepseek-r1 mm-image] [--max-epochs 8] [--out .bench/nll.json]

Datasets (time-based split, train on the earlier part, score the later part):

* ``mooncake`` — the real Mooncake FAST'25 hour: train on the first 40 minutes.
  Its inferred conversation columns are dropped, so all three generators
  score the same plain request stream (with them, the baselines move
  follow-ups' time and input into a ``conversation`` part the neural model
  does not have yet);
* ``deepseek-r1`` / ``mm-image`` — traces sampled from the ServeGen pools
  (``--pool-hours`` from ``--pool-start-s``, seed 0): train on all but the
  last ``--test-hours``, test on those. The pools describe one day and wrap
  after it, so the default (28 h, test the last 4) trains on a whole day and
  tests on the first hours of the next, times of day the models have seen.
  A split inside one day (e.g. ``--pool-hours 6 --test-hours 2``) tests on
  hours no model saw; every generator reads them at their phase inside its
  learned span (a span shorter than a day repeats), as it samples them.

Every generator uses its default configuration (the neural one:
configs/model/neural.yaml, trainer with ``--max-epochs``, early stopping,
one torch thread). Each held-out event is scored with ``log_prob`` (window:
the held-out period) and averaged with ``summarize_log_prob``. Prints a
Markdown table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "data" / "traces"
POOLS = {
    "deepseek-r1": TRACES / "servegen" / "reason" / "deepseek-r1",
    "mm-image": TRACES / "servegen" / "multimodal" / "mm-image",
}
PARTS = ["time", "input_tokens", "output_tokens", "reasoning_tokens", "image_count", "image_tokens", "total"]


def load_split(name: str, args) -> tuple:
    from servegen_ml.pool import read_source

    if name == "mooncake":
        trace = read_source(TRACES / "mooncake-fast25" / "conversation_trace.jsonl")
        trace = trace.drop(columns=[c for c in ("conversation_id", "turn") if c in trace.columns])
        cut_s = trace["timestamp"].min() + 40 * 60.0
    else:
        start, hours = args.pool_start_s, args.pool_hours
        trace = read_source(POOLS[name], format="servegen", start_s=start, duration_s=hours * 3600.0, seed=0)
        cut_s = trace["timestamp"].min() + (hours - args.test_hours) * 3600.0
    t = trace["timestamp"].to_numpy()
    train = trace[t < cut_s].reset_index(drop=True)
    test = trace[t >= cut_s].reset_index(drop=True)
    return train, test


def generators(max_epochs: int) -> dict:
    from servegen_ml.generators.naive import NaiveGenerator
    from servegen_ml.generators.neural import NeuralGenerator
    from servegen_ml.generators.parametric import ParametricGenerator

    trainer = {"accelerator": "cpu", "devices": 1, "max_epochs": max_epochs, "num_threads": 1, "default_root_dir": None,
               "gradient_clip_val": 1.0, "num_sanity_val_steps": 0, "callbacks": {"early_stopping": {"patience": 3}}}  # fmt: skip
    return {
        "naive": NaiveGenerator(),
        "parametric": ParametricGenerator(),
        "neural": NeuralGenerator(trainer=trainer),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["mooncake", "deepseek-r1", "mm-image"])
    ap.add_argument("--max-epochs", type=int, default=8)
    ap.add_argument("--pool-start-s", type=float, default=0.0)
    ap.add_argument("--pool-hours", type=float, default=28.0)
    ap.add_argument("--test-hours", type=float, default=4.0)
    ap.add_argument("--out", default=str(ROOT / ".bench" / "nll.json"))
    args = ap.parse_args()
    from servegen_ml.generators.base import summarize_log_prob

    results = []
    for name in args.datasets:
        train, test = load_split(name, args)
        for kind, gen in generators(args.max_epochs).items():
            t0 = time.perf_counter()
            gen.fit(train)
            fit_s = time.perf_counter() - t0
            nll = summarize_log_prob(gen.log_prob(test))
            row = {
                "dataset": name,
                "generator": kind,
                "train_events": len(train),
                "test_events": len(test),
                "fit_s": round(fit_s, 1),
            }
            row.update({k[4:]: round(v, 3) for k, v in nll.items() if k.startswith("nll_")})
            if kind == "neural":
                row["epochs"] = gen.state_.training["epochs"]
            results.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print("\n| dataset | generator | " + " | ".join(PARTS) + " | fit s |")
    print("|---|---|" + "---|" * (len(PARTS) + 1))
    for r in results:
        cells = [f"{r[p]:.3f}" if p in r else "—" for p in PARTS]
        print(f"| {r['dataset']} | {r['generator']} | " + " | ".join(cells) + f" | {r['fit_s']} |")


if __name__ == "__main__":
    main()
