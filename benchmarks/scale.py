"""Scale benchmark: the whole pipeline on a synthetic trace of N requests, each step in a fresh process.

    python benchmarks/scale.py --rows 1000000 10000000 [--workdir DIR] [--steps convert validate ...]

For each size it writes a synthetic native CSV trace spanning one day
(written block by block, so any size fits in memory): thousands of clients
with heavy-tailed (log-normal) rates, a daily rate cycle, images on a quarter
of the clients' requests, reasoning tokens on reasoning clients, and
multi-turn conversations (``--no-conversations`` leaves them out). Then it runs, each as ``servegen-ml`` in a fresh
process under ``/usr/bin/time -v`` (peak resident memory):

convert (CSV -> Parquet), validate, characterize, train parametric, train
neural (one epoch, or ``--neural-max-steps N`` optimizer steps after building
the whole event store), generate one day from the parametric checkpoint at the
trace's own rate.

It prints a Markdown table of wall time, rows/s and peak memory per step (and
writes it to ``DIR/scale_N.md``). A step that fails is reported with its exit
code and the last line of its error; the next steps go on where they can.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

REPO = Path(__file__).resolve().parents[1]
DAY_S = 86_400.0
BLOCK_ROWS = 1_000_000
STEPS = ("convert", "validate", "characterize", "train parametric", "train neural", "generate")


class TraceSynthesizer:
    """Streams a realistic synthetic trace in blocks; state (per-client conversations) carries across blocks."""

    def __init__(self, rows: int, seed: int = 0, clients: int | None = None, conversations: bool = True):
        self.rows = rows
        self.with_conversations = conversations
        self.rng = np.random.default_rng(seed)
        self.n_clients = clients or int(np.clip(rows // 500, 100, 5_000))
        weight = self.rng.lognormal(0.0, 2.0, self.n_clients)  # heavy-tailed rates
        self.share = weight / weight.sum()
        self.multimodal = self.rng.random(self.n_clients) < 0.25
        self.reasoning = self.rng.random(self.n_clients) < 0.3
        self.input_scale = self.rng.lognormal(7.0, 1.0, self.n_clients)
        self.output_scale = self.rng.lognormal(5.0, 0.7, self.n_clients)
        self.follow_up = self.rng.uniform(
            0.0, 0.6, self.n_clients
        )  # share of requests continuing a conversation
        self.conversations = np.zeros(self.n_clients, dtype=np.int64)
        self.turn = np.zeros(self.n_clients, dtype=np.int64)
        self.mean_rate = rows / DAY_S
        self.t = 0.0
        self.written = 0

    def _timestamps(self, n: int) -> np.ndarray:
        # A daily cycle (peak 3x trough, mean rate = rows per day) by thinning a Poisson stream at the peak rate.
        out, peak = [], self.mean_rate * 1.5
        while sum(len(x) for x in out) < n:
            t = self.t + np.cumsum(self.rng.exponential(1.0 / peak, size=n))
            keep = self.rng.random(n) < (1.0 + 0.5 * np.sin(2 * np.pi * t / DAY_S)) / 1.5
            out.append(t[keep])
            self.t = float(t[-1])
        t = np.concatenate(out)[:n]
        self.t = float(t[-1])
        return t

    def block(self, n: int) -> pa.Table:
        rng = self.rng
        client = rng.choice(self.n_clients, size=n, p=self.share)
        t = self._timestamps(n)
        output = np.maximum(1, rng.lognormal(np.log(self.output_scale[client]), 0.8)).astype(np.int64)
        text = np.maximum(1, rng.lognormal(np.log(self.input_scale[client]), 1.0)).astype(np.int64)
        images = np.where(self.multimodal[client] & (rng.random(n) < 0.6), rng.integers(1, 4, n), 0)
        item_tokens = rng.choice([256, 576, 1024, 1280], size=int(images.sum()))
        image_sum = np.bincount(np.repeat(np.arange(n), images), weights=item_tokens, minlength=n)
        reasoning = np.where(self.reasoning[client], (output * rng.beta(2, 2, n)).astype(np.int64), 0)
        conv, turn = self._conversations(client)
        cells = pa.ListArray.from_arrays(
            pa.array(np.r_[0, np.cumsum(images)].astype(np.int32)), pa.array(item_tokens, type=pa.int64())
        )
        image_cells = pc.binary_join_element_wise(
            "[", pc.binary_join(pc.cast(cells, pa.list_(pa.string())), ", "), "]", ""
        )
        client_names = pc.binary_join_element_wise("client-", pc.cast(pa.array(client), pa.string()), "")
        table = pa.table(
            {
                "timestamp": np.round(t, 6),
                "client_id": client_names,
                "request_id": pc.binary_join_element_wise(
                    "req-", pc.cast(pa.array(np.arange(self.written, self.written + n)), pa.string()), ""
                ),
                "input_tokens": text + image_sum.astype(np.int64),
                "output_tokens": output,
                "text_tokens": text,
                "image_tokens": image_cells,
                "reasoning_tokens": reasoning,
                "conversation_id": pc.binary_join_element_wise(
                    client_names, pc.cast(pa.array(conv), pa.string()), "/"
                ),
                "turn": turn,
            }
        )
        self.written += n
        if not self.with_conversations:
            table = table.drop_columns(["conversation_id", "turn"])
        return table

    def _conversations(self, client: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per request: its conversation number within the client and its turn (continuing across blocks)."""
        n = len(client)
        new = self.rng.random(n) >= self.follow_up[client]
        order = np.argsort(client, kind="stable")
        c, fresh = client[order], new[order]
        first = np.r_[True, c[1:] != c[:-1]]
        # A client's first request in the block continues its open conversation unless it starts one.
        fresh = fresh | (first & (self.turn[c] == 0))
        conv_sorted = self.conversations[c] + _cumsum_within(fresh.astype(np.int64), first)
        run_start = np.maximum.accumulate(np.where(fresh | first, np.arange(n), 0))
        turn_sorted = np.where(
            fresh[run_start],
            np.arange(n) - run_start + 1,
            self.turn[c] + np.arange(n) - run_start + 1,
        )
        last = np.r_[c[1:] != c[:-1], True]
        self.conversations[c[last]] = conv_sorted[last]
        self.turn[c[last]] = turn_sorted[last]
        conv, turn = np.empty(n, np.int64), np.empty(n, np.int64)
        conv[order], turn[order] = conv_sorted, turn_sorted
        return conv, turn

    def write_csv(self, path: Path) -> None:
        tmp = path.with_suffix(".part")
        first = self.block(min(BLOCK_ROWS, self.rows))
        with pa_csv.CSVWriter(tmp, first.schema) as writer:
            writer.write_table(first)
            while self.written < self.rows:
                writer.write_table(self.block(min(BLOCK_ROWS, self.rows - self.written)))
        os.replace(tmp, path)


def _cumsum_within(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting where ``first`` is True."""
    total = np.cumsum(values)
    start = np.maximum.accumulate(np.where(first, np.arange(len(values)), 0))
    return total - total[start] + values[start]


def run_step(name: str, args: list[str], log: Path) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "servegen_ml.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    text = log.read_text(errors="replace")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    error = ""
    if result.returncode:
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("\t")]
        error = lines[-1][:120] if lines else ""
    return {
        "step": name,
        "seconds": seconds,
        "peak_mb": int(peak.group(1)) / 1024 if peak else float("nan"),
        "rc": result.returncode,
        "error": error,
    }


def steps_for(work: Path, csv: Path, rows: int, neural_max_steps: int = 0) -> dict[str, list[str]]:
    parquet = work / "trace.parquet"
    # A bounded neural run: the store is built in full, then training stops after that many steps.
    bounded = [f"+trainer.max_steps={neural_max_steps}", "trainer.min_steps=0"] if neural_max_steps else []
    return {
        "convert": ["convert", f"data.path={csv}", f"out={parquet}"],
        "validate": ["validate", f"data.path={parquet}"],
        "characterize": ["characterize", f"data.path={parquet}", f"out={work / 'characterize'}"],
        "train parametric": [
            "train",
            f"data.path={parquet}",
            "model=parametric",
            f"out={work / 'parametric'}",
            "overwrite=true",
            "quiet=true",
        ],
        "train neural": [
            "train",
            f"data.path={parquet}",
            "model=neural",
            "trainer.max_epochs=1",
            *bounded,
            "trainer.default_root_dir=null",
            f"out={work / 'neural'}",
            "overwrite=true",
            "quiet=true",
        ],
        "generate": [
            "generate",
            f"checkpoint={work / 'parametric'}",
            f"duration_s={DAY_S:.0f}",
            f"out={work / 'generated.parquet'}",
            "quiet=true",
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/servegen-ml-scale"))
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-conversations",
        action="store_true",
        help="leave out conversation_id and turn (requests only: no conversation model to fit)",
    )
    parser.add_argument(
        "--neural-max-steps",
        type=int,
        default=0,
        help="stop the neural training after this many steps (0: one whole epoch); the store is built in full",
    )
    args = parser.parse_args()
    for rows in args.rows:
        work = args.workdir / f"rows_{rows}{'_noconv' if args.no_conversations else ''}"
        work.mkdir(parents=True, exist_ok=True)
        csv = work / "trace.csv"
        if not csv.exists():
            started = time.perf_counter()
            synth = TraceSynthesizer(rows, args.seed, conversations=not args.no_conversations)
            synth.write_csv(csv)
            print(
                f"wrote {csv} ({csv.stat().st_size / 2**20:,.0f} MB, {synth.n_clients:,} clients) "
                f"in {time.perf_counter() - started:.0f} s",
                flush=True,
            )
        commands = steps_for(work, csv, rows, args.neural_max_steps)
        lines = [
            f"**{rows:,} rows** ({csv.stat().st_size / 2**20:,.0f} MB CSV"
            f"{', no conversation ids' if args.no_conversations else ''})",
            "",
            "| step | wall (s) | rows/s | peak memory (MB) | exit |",
            "|---|---:|---:|---:|---|",
        ]
        print("\n".join(lines), flush=True)
        for name in args.steps:
            r = run_step(name, commands[name], work / f"{name.replace(' ', '_')}.log")
            line = (
                f"| {name} | {r['seconds']:,.1f} | {rows / r['seconds']:,.0f} | {r['peak_mb']:,.0f} | "
                f"{r['rc']}{(': ' + r['error']) if r['error'] else ''} |"
            )
            lines.append(line)
            print(line, flush=True)
        (work / f"scale_{rows}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
