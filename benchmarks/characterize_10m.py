"""Time and peak memory of ``servegen-ml characterize`` on a synthetic 10-million-row trace.

    python benchmarks/characterize_10m.py [--rows 10000000] [--chunk-rows 1000000] [--workdir /tmp/characterize_10m]

Writes a synthetic Parquet trace (one day; 200 clients with Zipf-like rates and
Gamma inter-arrivals of CV 0.7-4; log-normal correlated lengths; reasoning
tokens; images on 20 % of requests; 30 % follow-up turns), then runs the
characterize command in a child process and prints its wall time and peak RSS
(the child's own maximum resident set size, from getrusage).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DAY_S = 86_400.0


def synthetic_columns(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Timestamp-sorted columns of a one-day, 200-client trace with about ``rows`` requests."""
    n_clients = 200
    weights = 1.0 / np.arange(1, n_clients + 1) ** 1.1
    counts = rng.multinomial(rows, weights / weights.sum())
    cvs = rng.uniform(0.7, 4.0, n_clients)
    t = np.empty(rows)
    client = np.repeat(np.arange(n_clients, dtype=np.int32), counts)
    start = 0
    for c, n in enumerate(counts):
        shape = 1.0 / cvs[c] ** 2
        gaps = rng.gamma(shape, 1.0, n)
        t[start : start + n] = np.cumsum(gaps) / gaps.sum() * DAY_S * rng.uniform(0.98, 1.0)
        start += n
    order = np.argsort(t, kind="stable")
    t, client = t[order], client[order]
    z = rng.standard_normal((rows, 2)).astype(np.float32)
    inp = np.round(np.exp(6.0 + 0.02 * (client % 50) + 0.9 * z[:, 0])).astype(np.int64)
    out = np.round(np.exp(5.0 + 0.8 * (0.5 * z[:, 0] + 0.87 * z[:, 1]))).astype(np.int64) + 1
    ratio = np.where(rng.random(rows) < 0.3, 0.0, rng.beta(5, 2, rows))
    conversation = np.arange(rows, dtype=np.int64)
    follow = np.flatnonzero(rng.random(rows) < 0.3)
    conversation[follow] = conversation[np.maximum(follow - rng.integers(1, 2000, len(follow)), 0)]
    images = np.where(rng.random(rows) < 0.2, rng.integers(1, 4, rows), 0)
    return {
        "timestamp": t,
        "client": client,
        "input_tokens": inp,
        "output_tokens": out,
        "reasoning_tokens": np.floor(ratio * out).astype(np.int64),
        "conversation": conversation,
        "images": images,
    }


def write_trace(
    path: Path, cols: dict[str, np.ndarray], rng: np.random.Generator, row_group: int = 1_000_000
) -> None:
    schema = pa.schema(
        [
            ("timestamp", pa.float64()),
            ("client_id", pa.string()),
            ("input_tokens", pa.int64()),
            ("output_tokens", pa.int64()),
            ("image_tokens", pa.list_(pa.int64())),
            ("reasoning_tokens", pa.int64()),
            ("conversation_id", pa.string()),
        ]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for lo in range(0, len(cols["timestamp"]), row_group):
            s = slice(lo, lo + row_group)
            counts = cols["images"][s]
            offsets = np.r_[0, np.cumsum(counts)].astype(np.int32)
            image_tokens = rng.choice([256, 576, 1024, 1280], size=int(offsets[-1])).astype(np.int64)
            table = pa.table(
                {
                    "timestamp": cols["timestamp"][s],
                    "client_id": pa.array(cols["client"][s]).cast(pa.string()),
                    "input_tokens": cols["input_tokens"][s]
                    + np.add.reduceat(np.r_[image_tokens, 0], offsets[:-1]) * (counts > 0),
                    "output_tokens": cols["output_tokens"][s],
                    "image_tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(image_tokens)),
                    "reasoning_tokens": cols["reasoning_tokens"][s],
                    "conversation_id": pa.array(cols["conversation"][s]).cast(pa.string()),
                },
                schema=schema,
            )
            writer.write_table(table)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/characterize_10m"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-rows", type=int, default=1_000_000, help="rows per streamed chunk")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    trace = args.workdir / f"trace_{args.rows}.parquet"
    if not trace.exists():
        started = time.perf_counter()
        rng = np.random.default_rng(args.seed)
        write_trace(trace, synthetic_columns(args.rows, rng), rng)
        print(
            f"wrote {trace} ({trace.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f} s"
        )
    out = args.workdir / "report"
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "servegen_ml.cli",
            "characterize",
            f"data.path={trace}",
            f"out={out}",
            f"chunk_rows={args.chunk_rows}",
        ],
        check=False,
    )
    wall_s = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "rows": args.rows,
        "exit_code": done.returncode,
        "wall_s": round(wall_s, 1),
        "peak_rss_mib": round(peak_mib),
    }
    print(json.dumps(result))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
