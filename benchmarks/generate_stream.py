"""Time and peak memory of `servegen-ml generate` (streamed, with its worker processes).

    python benchmarks/generate_stream.py --duration-s 3600 86400 --rate 100 --workers 1 2

Runs the CLI in a fresh process per case and polls the memory of its whole
process tree (/proc, Linux) every 0.1 s: the peak of the summed RSS (shared
pages counted once per process, an upper bound) and of the summed PSS (shared
pages split between the processes that map them). Prints one Markdown row per
case, with the load average before it started.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB of one process, 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line and not line[0].isdigit())
        return int(fields["Rss"].split()[0]), int(fields["Pss"].split()[0])
    except (OSError, KeyError, ValueError):
        return 0, 0


def measure(args: list[str]) -> tuple[float, float, float, int]:
    """(seconds, peak summed RSS GB, peak summed PSS GB, return code) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss = pss = 0
        for p in _tree(proc.pid):
            r, s = _memory_kb(p)
            rss, pss = rss + r, pss + s
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.1)
    return time.perf_counter() - start, peak_rss / 1e6, peak_pss / 1e6, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="language/parametric")
    ap.add_argument("--duration-s", type=float, nargs="+", default=[3600.0, 86400.0])
    ap.add_argument("--rate", default="100")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--format", default="native")
    ap.add_argument("--suffix", default=".parquet")
    ap.add_argument("--out-dir", default=None, help="where the workloads go (deleted after each case)")
    a = ap.parse_args()
    print("| duration | workers | requests | seconds | peak RSS (sum) | peak PSS (sum) | load before |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for duration in a.duration_s:
        for workers in a.workers:
            with tempfile.TemporaryDirectory(dir=a.out_dir) as tmp:
                out = Path(tmp) / f"w{a.suffix}"
                load = os.getloadavg()
                cmd = [sys.executable, "-m", "servegen_ml.cli", "generate", f"checkpoint={a.checkpoint}"]
                cmd += [f"duration_s={duration:g}", f"rate={a.rate}", f"workers={workers}", f"out={out}"]
                cmd += [f"format={a.format}", "quiet=true", "seed=0"]
                seconds, rss, pss, rc = measure(cmd)
                if rc != 0:
                    print(f"failed (exit {rc}): {' '.join(cmd)}", file=sys.stderr)
                    return rc
                import json

                rows = json.loads(Path(str(out) + ".meta.json").read_text())["rows"]
                print(
                    f"| {duration:g} s | {workers} | {rows:,} | {seconds:.1f} | {rss:.2f} GB | {pss:.2f} GB | "
                    f"{load[0]:.1f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
