"""Bad traces, built in code: one writer per kind of defect, each with what the error must name."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

ROWS = 400


def good_frame(n: int = ROWS) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": np.round(np.arange(n) * 0.25, 3),
            "client_id": np.where(np.arange(n) % 2 == 0, "a", "b"),
            "input_tokens": np.full(n, 100),
            "output_tokens": np.full(n, 50),
        }
    )


def _csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def _csv_with_cell(path: Path, row: int, column: str, text: str) -> Path:
    frame = good_frame().astype({column: object})
    frame.loc[row - 1, column] = text
    return _csv(path, frame)


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _jsonl_bytes(path: Path, edit: Callable[[bytes], bytes]) -> Path:
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in good_frame().to_dict("records"))
    path.write_bytes(edit(lines))
    return path


# name -> (writer(directory) -> trace path, texts the error must contain)
BAD_TRACES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "int64 overflow": (
        lambda d: _csv_with_cell(d / "t.csv", 3, "input_tokens", "99999999999999999999999"),
        ("row 3", "input_tokens", "too large"),
    ),
    "implausible token count": (
        lambda d: _csv(d / "t.csv", good_frame().assign(input_tokens=10**12)),
        ("row 1", "input_tokens", "max_tokens"),
    ),
    "negative tokens": (
        lambda d: _csv_with_cell(d / "t.csv", 7, "output_tokens", "-5"),
        ("row 7", "output_tokens", "negative"),
    ),
    "not a number": (
        lambda d: _csv_with_cell(d / "t.csv", 2, "timestamp", "soon"),
        ("row 2", "timestamp", "not a number"),
    ),
    "non-UTF-8 JSONL": (
        lambda d: _jsonl_bytes(d / "t.jsonl", lambda b: b[:50] + b"\xff\xfe" + b[50:]),
        ("t.jsonl",),
    ),
    "broken JSON line": (
        lambda d: _jsonl_bytes(d / "t.jsonl", lambda b: b.replace(b"}\n", b"\n", 1)),
        ("t.jsonl", "line 1"),
    ),
    "JSON array instead of objects": (
        lambda d: _jsonl_bytes(d / "t.jsonl", lambda b: b"[1, 2, 3]\n" + b),
        ("t.jsonl", "line 1"),
    ),
    "missing column, auto format": (
        lambda d: _csv(d / "t.csv", good_frame().drop(columns="output_tokens")),
        ("t.csv", "output_tokens"),
    ),
    "truncated parquet": (
        lambda d: _bytes(d / "t.parquet", b"PAR1" + bytes(range(200))),
        ("t.parquet",),
    ),
    "random bytes": (lambda d: _bytes(d / "t.csv", bytes(range(256)) * 4), ("t.csv",)),
    "empty file": (lambda d: _bytes(d / "t.csv", b""), ("t.csv",)),
    "bad item list": (
        lambda d: _csv(d / "t.csv", good_frame().assign(image_tokens="[1, x]")),
        ("row 1", "image_tokens"),
    ),
    # Arrow's JSON reader once built an invalid list array from this line (IndexError, exit 1).
    "JSON item list with null": (
        lambda d: _jsonl_bytes(
            d / "t.jsonl", lambda b: b.replace(b"}\n", b', "image_tokens": [null, false]}\n', 1)
        ),
        ("line 1", "image_tokens"),
    ),
}


def write_bad_trace(name: str, directory: Path) -> tuple[Path, tuple[str, ...]]:
    writer, expected = BAD_TRACES[name]
    return writer(directory), expected
