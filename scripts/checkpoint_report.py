"""Print the model-card tables of the shipped checkpoints: size, fit time, held-out NLL per event.

    python scripts/checkpoint_report.py --work build/checkpoints language multimodal reasoning conversational

Reads ``checkpoints/<name>/<model>/`` (size, ``metrics.json``) and the held-out evaluation fits
``<work>/eval/<name>/<model>/metrics.json`` written by ``scripts/build_checkpoints.sh eval``.
With ``--samples`` it also samples one hour from each shipped checkpoint (seed 0) and sets it
beside the same hour of the training trace ``<work>/<name>.parquet``: requests, mean input and
output tokens, and the rate reached when asked for 20 req/s. ``--rates SECONDS`` prints only the
model cards' table of the traffic sampled at four times of day (natural and ``rate=20``):

    python scripts/checkpoint_report.py --rates 3600 multimodal reasoning
    python scripts/checkpoint_report.py --rates 600 --tokens language
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MODELS = ("naive", "parametric", "neural")
PARTS = (
    "time",
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "image_count",
    "image_tokens",
    "conversation",
)


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def read_metrics(path: Path) -> dict | None:
    file = path / "metrics.json"
    return json.loads(file.read_text()) if file.is_file() else None


def shipped_table(name: str) -> list[str]:
    rows = ["| checkpoint | size | trained on (requests) | fit time (s) |", "|---|---:|---:|---:|"]
    for model in MODELS:
        path = Path("checkpoints") / name / model
        metrics = read_metrics(path)
        if metrics is None:
            continue
        events = metrics.get("train_events", "streamed")
        events = f"{events:,}" if isinstance(events, int) else events
        rows.append(
            f"| `{path}` | {directory_bytes(path) / 2**20:.2f} MiB | {events} | {metrics['fit_seconds']:.0f} |"
        )
    return rows


def nll_table(name: str, work: Path) -> list[str]:
    found = {m: read_metrics(work / "eval" / name / m) for m in MODELS}
    found = {m: v for m, v in found.items() if v is not None and "held_out" in v}
    if not found:
        return ["(no held-out evaluation found)"]
    parts = [p for p in PARTS if any(f"nll_{p}" in v["held_out"] for v in found.values())]
    first = next(iter(found.values()))
    rows = [
        f"Held-out NLL per event (nats; fitted on the first {first['split']:.0%} of the time span, "
        f"{first['train_events']:,} requests; scored on the remaining {first['held_out_events']:,}):",
        "",
        "| model | total | " + " | ".join(parts) + " | fit time (s) |",
        "|---|---:|" + "---:|" * len(parts) + "---:|",
    ]
    for model, metrics in found.items():
        held = metrics["held_out"]
        cells = [f"{held[f'nll_{p}']:.3f}" if f"nll_{p}" in held else "–" for p in parts]
        rows.append(
            f"| {model} | **{held['nll_total']:.3f}** | "
            + " | ".join(cells)
            + f" | {metrics['fit_seconds']:.0f} |"
        )
    return rows


def sample_table(name: str, work: Path, start_s: float, duration_s: float = 3600.0) -> list[str]:
    from servegen_ml.core.spec import GenerationSpec
    from servegen_ml.generators.base import load_generator
    from servegen_ml.trace.io import read_trace

    real = read_trace(work / f"{name}.parquet")
    t = real["timestamp"].to_numpy() - real["timestamp"].min()
    real = real[(t >= start_s) & (t < start_s + duration_s)]
    rows = [
        f"One hour from {start_s / 3600:g} h into the learned timeline (seed 0) beside the same hour of the training trace:",
        "",
        "| source | requests | mean input | mean output | req/s asked 20 |",
        "|---|---:|---:|---:|---:|",
        f"| training trace | {len(real):,} | {real['input_tokens'].mean():,.0f} | {real['output_tokens'].mean():,.0f} | – |",
    ]
    for model in MODELS:
        path = Path("checkpoints") / name / model
        if not (path / "manifest.json").is_file():
            continue
        gen = load_generator(path)
        natural = gen.sample(
            GenerationSpec.from_values(duration_s=duration_s, start_s=start_s), np.random.default_rng(0)
        )
        spec20 = GenerationSpec.from_values(duration_s=duration_s, start_s=start_s, rate=20)
        at20 = gen.sample(spec20, np.random.default_rng(0))
        rows.append(
            f"| `{path}` | {len(natural):,} | {natural['input_tokens'].mean():,.0f} | "
            f"{natural['output_tokens'].mean():,.0f} | {len(at20) / duration_s:.1f} |"
        )
    return rows


def rate_table(
    name: str, work: Path, duration_s: float, hours=(0, 6, 10, 20), tokens: bool = False
) -> list[str]:
    """The model cards' "sampled traffic beside the trace" table: req/s at the natural rate and with ``rate=20``.

    ``duration_s`` from each hour of the learned first day (seed 0), beside the same window of the
    training trace ``<work>/<name>.parquet``; with ``tokens`` also mean input / output tokens.
    """
    from servegen_ml.core.spec import GenerationSpec
    from servegen_ml.generators.base import load_generator
    from servegen_ml.trace.io import read_trace

    real = read_trace(work / f"{name}.parquet")
    t = real["timestamp"].to_numpy() - real["timestamp"].min()
    models = [
        m for m in ("parametric", "neural") if (Path("checkpoints") / name / m / "manifest.json").is_file()
    ]
    gens = {m: load_generator(Path("checkpoints") / name / m) for m in models}
    head = ["time", "trace req/s", *models, *(f"{m}, `rate=20`" for m in models)]
    if tokens:
        head += ["trace tokens in / out", *models]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]

    def in_out(df):
        return f"{df['input_tokens'].mean():,.0f} / {df['output_tokens'].mean():,.0f}"

    for hour in hours:
        start_s = hour * 3600.0
        window = real[(t >= start_s) & (t < start_s + duration_s)]
        natural, at20 = {}, {}
        for m, gen in gens.items():
            natural[m] = gen.sample(
                GenerationSpec.from_values(duration_s=duration_s, start_s=start_s), np.random.default_rng(0)
            )
            spec20 = GenerationSpec.from_values(duration_s=duration_s, start_s=start_s, rate=20)
            at20[m] = len(gen.sample(spec20, np.random.default_rng(0))) / duration_s
        cells = [f"{hour:02d}:00", f"{len(window) / duration_s:.1f}"]
        cells += [f"{len(natural[m]) / duration_s:.1f}" for m in models] + [f"{at20[m]:.1f}" for m in models]
        if tokens:
            cells += [in_out(window)] + [in_out(natural[m]) for m in models]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("build/checkpoints"))
    parser.add_argument("--samples", action="store_true", help="also compare one sampled hour with the trace")
    parser.add_argument(
        "--rates",
        type=float,
        metavar="SECONDS",
        help="only the model cards' rate table: SECONDS sampled from 00, 06, 10 and 20 h, natural and rate=20",
    )
    parser.add_argument("--tokens", action="store_true", help="with --rates: also mean input / output tokens")
    parser.add_argument("names", nargs="+")
    args = parser.parse_args()
    if args.rates:
        for name in args.names:
            print(f"## {name}\n")
            print("\n".join(rate_table(name, args.work, args.rates, tokens=args.tokens)) + "\n", flush=True)
        return
    for name in args.names:
        print(f"## {name}\n")
        print("\n".join(shipped_table(name)) + "\n")
        print("\n".join(nll_table(name, args.work)) + "\n")
        if name == "conversational":
            print("Without conversation ids (every request an arrival with its whole prompt):\n")
            print("\n".join(nll_table("conversational-arrivals", args.work)) + "\n")
        if args.samples:
            start_s = 0.0 if name == "conversational" else 36_000.0
            print("\n".join(sample_table(name, args.work, start_s)) + "\n")


if __name__ == "__main__":
    main()
