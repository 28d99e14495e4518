"""The export formats of docs/exports.md, each a writer from a canonical trace to a file.

Every writer gets a trace already sorted by arrival with its first request at
0 s, writes ``path`` atomically and returns the format's part of the sidecar
(field units and the rules used). Token counts are the canonical ones:
``input_tokens`` (multimodal tokens included) and ``output_tokens`` (reasoning
included).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from servegen_ml.core.atomic import atomic_path
from servegen_ml.export import jsonl
from servegen_ml.export.hash_ids import PrefixBlocks, conversation_chains
from servegen_ml.trace.schema import MODALITIES, UNITS, list_lengths

MOONCAKE_BLOCK_TOKENS = 512
BAILIAN_BLOCK_TOKENS = 16
# Wall-clock time of the first request in the azure export (the format has no relative times).
AZURE_EPOCH = "2024-01-01 00:00:00"
AZURE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
# Bound the Arrow strings built per JSONL chunk.
MAX_ROWS_PER_CHUNK = 200_000
MAX_BLOCKS_PER_CHUNK = 4_000_000

PREFIX_RULE = (
    "a follow-up turn (same conversation_id, next turn) begins with the complete blocks of its predecessor's "
    "prompt (min(predecessor input_length // block, own block count)); all other blocks get fresh ids, "
    "counted from 0 in row order"
)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    write: Callable[[pd.DataFrame, Path], dict]
    used_by: str


def _ints(df: pd.DataFrame, column: str) -> np.ndarray:
    return df[column].to_numpy(dtype=np.int64)


def _row_chunks(blocks_per_row: np.ndarray) -> Iterator[tuple[int, int]]:
    """Row ranges with at most MAX_ROWS_PER_CHUNK rows and about MAX_BLOCKS_PER_CHUNK block ids."""
    n = len(blocks_per_row)
    cum = np.cumsum(blocks_per_row)
    start = 0
    while start < n:
        before = cum[start - 1] if start else 0
        stop = int(np.searchsorted(cum, before + MAX_BLOCKS_PER_CHUNK, side="right"))
        stop = min(max(stop, start + 1), start + MAX_ROWS_PER_CHUNK, n)
        yield start, stop
        start = stop


def _write_block_jsonl(path: Path, blocks: PrefixBlocks, fields: dict[str, np.ndarray | pa.Array]) -> None:
    """JSONL with the given per-row fields plus ``hash_ids``, written chunk by chunk."""
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        for start, stop in _row_chunks(blocks.blocks):
            counts, ids = blocks.rows(start, stop)
            text = {name: _field(values[start:stop]) for name, values in fields.items()}
            text["hash_ids"] = jsonl.list_field(counts, ids)
            jsonl.write_lines(fh, text)


def _field(values) -> pa.Array:
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        return jsonl.number_field(values)
    return jsonl.string_field(np.asarray(values))


def write_native(df: pd.DataFrame, path: Path) -> dict:
    from servegen_ml.trace.io import write_trace

    write_trace(df, path)
    return {"units": {c: UNITS[c] for c in df.columns if c in UNITS}, "columns": list(df.columns)}


def write_mooncake(df: pd.DataFrame, path: Path) -> dict:
    predecessor, _ = conversation_chains(df)
    blocks = PrefixBlocks(_ints(df, "input_tokens"), predecessor, MOONCAKE_BLOCK_TOKENS)
    fields = {
        # Round, not floor: 2.9999999 s from a ms-resolution source is 3000 ms.
        "timestamp": np.rint(df["timestamp"].to_numpy() * 1000.0).astype(np.int64),
        "input_length": _ints(df, "input_tokens"),
        "output_length": _ints(df, "output_tokens"),
    }
    _write_block_jsonl(path, blocks, fields)
    return {
        "units": {
            "timestamp": "ms since the first request (int)",
            "input_length": "tokens",
            "output_length": "tokens",
            "hash_ids": f"ids of {MOONCAKE_BLOCK_TOKENS}-token prompt blocks, len = ceil(input_length / 512)",
        },
        "block_tokens": MOONCAKE_BLOCK_TOKENS,
        "hash_ids_rule": PREFIX_RULE,
    }


def request_type(df: pd.DataFrame) -> np.ndarray:
    """Bailian ``type``: the first modality (image, audio, video) with items in the request, else ``text``."""
    out = np.full(len(df), "text", dtype=object)
    for modality in reversed(MODALITIES):
        column = f"{modality}_tokens"
        if column in df.columns:
            out[list_lengths(df[column]) > 0] = modality
    return out


def write_bailian(df: pd.DataFrame, path: Path) -> dict:
    predecessor, position = conversation_chains(df)
    blocks = PrefixBlocks(_ints(df, "input_tokens"), predecessor, BAILIAN_BLOCK_TOKENS)
    turn = _ints(df, "turn") if "turn" in df.columns else position
    fields = {
        "chat_id": np.arange(len(df), dtype=np.int64),
        # chat_id is the row index, so a predecessor's row index is its chat_id.
        "parent_chat_id": predecessor,
        "timestamp": np.round(df["timestamp"].to_numpy(dtype=np.float64), 6),
        "input_length": _ints(df, "input_tokens"),
        "output_length": _ints(df, "output_tokens"),
        "type": request_type(df),
        "turn": turn,
    }
    _write_block_jsonl(path, blocks, fields)
    return {
        "units": {
            "chat_id": "request index in file order",
            "parent_chat_id": "chat_id of the previous turn, -1 for a first turn",
            "turn": "1-based position in the conversation",
            "timestamp": "s since the first request (rounded to 1 us)",
            "input_length": "tokens",
            "output_length": "tokens",
            "type": "text | image | audio | video (first modality with items)",
            "hash_ids": f"ids of {BAILIAN_BLOCK_TOKENS}-token prompt blocks, len = ceil(input_length / 16)",
        },
        "block_tokens": BAILIAN_BLOCK_TOKENS,
        "hash_ids_rule": PREFIX_RULE,
    }


def _write_csv(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        fh.write((",".join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=False, quoting_style="none"))


def write_vidur(df: pd.DataFrame, path: Path) -> dict:
    table = pa.table(
        {
            "arrived_at": df["timestamp"].to_numpy(dtype=np.float64),
            "num_prefill_tokens": _ints(df, "input_tokens"),
            "num_decode_tokens": _ints(df, "output_tokens"),
        }
    )
    _write_csv(path, table)
    return {
        "units": {
            "arrived_at": "s since the first request",
            "num_prefill_tokens": "tokens",
            "num_decode_tokens": "tokens",
        }
    }


def write_azure(df: pd.DataFrame, path: Path) -> dict:
    epoch_us = np.datetime64(AZURE_EPOCH, "us").astype(np.int64)
    offset_us = np.rint(df["timestamp"].to_numpy(dtype=np.float64) * 1e6).astype(np.int64)
    wall = pa.array(epoch_us + offset_us, type=pa.timestamp("us"))
    table = pa.table(
        {
            # Arrow's %S prints seconds with the microseconds of a us timestamp, i.e. %S.%f.
            "TIMESTAMP": pc.strftime(wall, format="%Y-%m-%d %H:%M:%S"),
            "ContextTokens": _ints(df, "input_tokens"),
            "GeneratedTokens": _ints(df, "output_tokens"),
        }
    )
    _write_csv(path, table)
    return {
        "units": {
            "TIMESTAMP": f"wall clock {AZURE_TIME_FORMAT}; the first request is at {AZURE_EPOCH}.000000",
            "ContextTokens": "tokens",
            "GeneratedTokens": "tokens",
        },
        "epoch": AZURE_EPOCH,
    }


FORMATS = {
    f.name: f
    for f in (
        ExportFormat("native", write_native, "this project, pandas (Parquet, JSONL or CSV by extension)"),
        ExportFormat(
            "mooncake", write_mooncake, "vLLM bench serve timed_trace, aiperf mooncake_trace, guidellm"
        ),
        ExportFormat("bailian", write_bailian, "aiperf bailian_trace"),
        ExportFormat("vidur", write_vidur, "Vidur trace replay"),
        ExportFormat("azure", write_azure, "inference-perf trace replay"),
    )
}
