"""Damaged checkpoints, built in code from the shipped ones: one function per kind of damage."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
PARAMETRIC = REPO / "checkpoints" / "conversational" / "parametric"
NEURAL = REPO / "checkpoints" / "conversational" / "neural"


def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    result = edit(data)
    path.write_text(json.dumps(data if result is None else result))


def _edit_tensors(path: Path, edit: Callable[[dict], None]) -> None:
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def _edit_parquet(path: Path, edit: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(edit(pq.read_table(path)), path)


def _set(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, pa.array(values))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32  # the header of a safetensors file, the middle of a Parquet footer's neighbour
    path.write_bytes(bytes(data))


# name -> (source checkpoint, damage, the file the message must name)
DAMAGES: dict[str, tuple[Path, Callable[[Path], None], str]] = {
    "truncated safetensors": (NEURAL, lambda d: _truncate(d / "model.safetensors"), "model.safetensors"),
    "corrupt safetensors header": (
        NEURAL,
        lambda d: _corrupt(d / "clients.safetensors"),
        "clients.safetensors",
    ),
    "truncated parquet": (PARAMETRIC, lambda d: _truncate(d / "rates.parquet"), "rates.parquet"),
    "manifest kind swapped": (
        NEURAL,
        lambda d: _edit_json(d / "manifest.json", lambda m: m.update(generator="parametric")),
        "manifest.json",
    ),
    "manifest unknown kind": (
        PARAMETRIC,
        lambda d: _edit_json(d / "manifest.json", lambda m: m.update(generator="magic")),
        "manifest.json",
    ),
    "manifest is a list": (
        PARAMETRIC,
        lambda d: _edit_json(d / "manifest.json", lambda m: [m]),
        "manifest.json",
    ),
    "format version is a string": (
        PARAMETRIC,
        lambda d: _edit_json(d / "manifest.json", lambda m: m.update(format_version="1")),
        "manifest.json",
    ),
    "config is a list": (
        PARAMETRIC,
        lambda d: _edit_json(d / "manifest.json", lambda m: m.update(config=[1, 2])),
        "manifest.json",
    ),
    "manifest not JSON": (
        PARAMETRIC,
        lambda d: (d / "manifest.json").write_bytes(b"\x00{oops"),
        "manifest.json",
    ),
    "model description is a list": (
        NEURAL,
        lambda d: _edit_json(d / "neural.json", lambda m: m.update(model=[1])),
        "neural.json",
    ),
    "pool span 0": (
        PARAMETRIC,
        lambda d: _edit_json(d / "pool.json", lambda m: m.update(span_s=0)),
        "pool.json",
    ),
    "neural span 0": (
        NEURAL,
        lambda d: _edit_json(d / "neural.json", lambda m: m.update(span_s=0)),
        "neural.json",
    ),
    "pool clients cut short": (
        PARAMETRIC,
        lambda d: _edit_json(d / "pool.json", lambda m: m.update(clients=[])),
        "pool.json",
    ),
    "neural client ids cut short": (
        NEURAL,
        lambda d: _edit_json(d / "neural.json", lambda m: m.update(client_ids=m["client_ids"] + ["extra"])),
        "neural.json",
    ),
    "negative rates": (
        PARAMETRIC,
        lambda d: _edit_parquet(d / "rates.parquet", lambda t: _set(t, "rate", -t["rate"].to_numpy())),
        "rates.parquet",
    ),
    "probability above 1": (
        PARAMETRIC,
        lambda d: _edit_parquet(d / "pmfs.parquet", lambda t: _set(t, "prob", t["prob"].to_numpy() + 1.5)),
        "pmfs.parquet",
    ),
    "rates of unknown clients": (
        PARAMETRIC,
        lambda d: _edit_parquet(
            d / "rates.parquet", lambda t: _set(t, "client_id", np.full(t.num_rows, "stranger", dtype=object))
        ),
        "rates.parquet",
    ),
    "wrong-shape activity table": (
        NEURAL,
        lambda d: _edit_tensors(
            d / "model.safetensors", lambda w: w.update(activity=np.zeros((3, 5), np.float32))
        ),
        "model.safetensors",
    ),
    "NaN weights": (
        NEURAL,
        lambda d: _edit_tensors(
            d / "model.safetensors",
            lambda w: w.update({"heads.out.time.weight": np.full_like(w["heads.out.time.weight"], np.nan)}),
        ),
        "model.safetensors",
    ),
    "bias does not match its weight": (
        NEURAL,
        lambda d: _edit_tensors(
            d / "model.safetensors", lambda w: w.update({"heads.out.time.bias": np.zeros(3, np.float32)})
        ),
        "model.safetensors",
    ),
    "output head reads the wrong width": (
        NEURAL,
        lambda d: _edit_tensors(
            d / "model.safetensors",
            lambda w: w.update({"heads.out.time.weight": w["heads.out.time.weight"][:, :10].copy()}),
        ),
        "model.safetensors",
    ),
    "weights as integers": (
        NEURAL,
        lambda d: _edit_tensors(
            d / "model.safetensors", lambda w: w.update({"gap_log_std": w["gap_log_std"].astype(np.int64)})
        ),
        "model.safetensors",
    ),
    "cut client table": (
        NEURAL,
        lambda d: _edit_tensors(d / "clients.safetensors", lambda c: c.update(traffic=c["traffic"][:0])),
        "clients.safetensors",
    ),
    "negative rate curves": (
        NEURAL,
        lambda d: _edit_tensors(
            d / "clients.safetensors", lambda c: c.update(rate_curves=-c["rate_curves"] - 1)
        ),
        "clients.safetensors",
    ),
    "missing weights file": (NEURAL, lambda d: (d / "model.safetensors").unlink(), "model.safetensors"),
    "missing conversation table": (
        PARAMETRIC,
        lambda d: (d / "conversation_values.parquet").unlink(),
        "conversation_values.parquet",
    ),
    "NaN in a conversation table": (
        PARAMETRIC,
        lambda d: _edit_parquet(
            d / "conversation_values.parquet",
            lambda t: _set(
                t,
                next(n for n in t.column_names if pa.types.is_floating(t.schema.field(n).type)),
                np.full(t.num_rows, np.nan),
            ),
        ),
        "conversation_values.parquet",
    ),
}
