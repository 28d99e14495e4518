"""Ingestion benchmark: rows/s and peak memory of ``convert`` (CSV -> Parquet) and ``validate``.

    python benchmarks/ingest.py --rows 1000000 10000000 [--workdir DIR] [--chunk-rows 1000000]

For each size it writes a synthetic native CSV (sorted timestamps, 100
clients, unique request ids, reasoning tokens, image lists as JSON arrays),
then runs each step in a fresh Python process and reads that process's peak
resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``). The first
step is the reference: Arrow's streaming CSV reader straight into a Parquet
writer, no checks; the table gives every step's time as a multiple of it.
Prints a Markdown table. Memory should stay flat as the file grows (chunked reading);
only the request-id hash set (8 bytes per row) grows with the row count.
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
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

BLOCK_ROWS = 1_000_000


def synthetic_block(rng: np.random.Generator, start_row: int, n: int, t0_s: float) -> pa.Table:
    """n native-format rows; lists encoded as in the CSV the writer produces."""
    timestamp = t0_s + np.cumsum(rng.exponential(0.01, size=n))
    rows = pa.array(np.arange(start_row, start_row + n))
    output = rng.integers(1, 2000, size=n)
    images = np.where(rng.random(n) < 0.2, "[576, 1024]", "[]")
    return pa.table(
        {
            "timestamp": timestamp,
            "client_id": pc.binary_join_element_wise(
                "c", pc.cast(pa.array(rng.integers(0, 100, size=n)), pa.string()), ""
            ),
            "request_id": pc.binary_join_element_wise("req-", pc.cast(rows, pa.string()), ""),
            "input_tokens": rng.integers(1, 32000, size=n),
            "output_tokens": output,
            "image_tokens": pa.array(images),
            "reasoning_tokens": (output * rng.random(n)).astype(np.int64),
        }
    )


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    t0_s = 0.0
    with pa_csv.CSVWriter(path, synthetic_block(rng, 0, 1, 0.0).schema) as writer:
        for start in range(0, rows, BLOCK_ROWS):
            block = synthetic_block(rng, start, min(BLOCK_ROWS, rows - start), t0_s)
            t0_s = block["timestamp"][-1].as_py()
            writer.write_table(block)


def bare_arrow(src: str, out: str) -> int:
    """The reference: Arrow's streaming CSV reader straight into a ParquetWriter, no checks; rows written."""
    import pyarrow.parquet as pq

    rows = 0
    reader = pa_csv.open_csv(src, read_options=pa_csv.ReadOptions(use_threads=True))
    with pq.ParquetWriter(out, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def child(step: str, src: str, out: str, chunk_rows: int) -> None:
    """Run one step and print {"seconds", "rows", "peak_rss_mb"} as JSON."""
    from servegen_ml.trace.convert import convert_trace
    from servegen_ml.trace.io import TraceReader
    from servegen_ml.trace.summary import TraceSummary

    start = time.perf_counter()  # imports excluded
    if step == "arrow read + write":
        summary = {"rows": bare_arrow(src, out)}
    elif step == "convert":
        summary, _ = convert_trace(src, out, chunk_rows=chunk_rows)
    else:
        reader = TraceReader(src, chunk_rows=chunk_rows, collect=True)
        acc = TraceSummary()
        for chunk in reader:
            acc.add(chunk)
        reader.finish()
        summary = acc.result()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "rows": summary["rows"], "peak_rss_mb": peak_mb}))


def measure(step: str, src: Path, out: Path, chunk_rows: int) -> dict:
    cmd = [sys.executable, __file__, "--child", step, str(src), str(out), str(chunk_rows)]
    result = subprocess.run(
        cmd, check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/servegen-ml-ingest"))
    parser.add_argument("--chunk-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--child", nargs=4, metavar=("STEP", "SRC", "OUT", "CHUNK_ROWS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        step, src, out, chunk_rows = args.child
        child(step, src, out, int(chunk_rows))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    print("| rows | CSV size (MB) | step | seconds | × bare Arrow | rows/s | peak RSS (MB) |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for rows in args.rows:
        src = args.workdir / f"synthetic_{rows}.csv"
        if not src.exists():
            write_csv(src, rows)
        size_mb = src.stat().st_size / 2**20
        bare_seconds = None
        for step in ("arrow read + write", "convert", "validate"):
            r = measure(step, src, args.workdir / f"synthetic_{rows}.parquet", args.chunk_rows)
            assert r["rows"] == rows, r
            bare_seconds = bare_seconds or r["seconds"]
            print(
                f"| {rows:,} | {size_mb:,.0f} | {step} | {r['seconds']:.1f} | {r['seconds'] / bare_seconds:.2f} "
                f"| {rows / r['seconds']:,.0f} | {r['peak_rss_mb']:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
