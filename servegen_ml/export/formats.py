"""The export formats of docs/exports.md, each a writer from a canonical trace to a file.

Every writer (:class:`FormatWriter`) gets a trace already sorted by arrival
with its first request at 0 s, in one or many consecutive chunks, writes
``path`` (the caller makes it atomic) and returns the format's part of the
sidecar (field units and the rules used). Token counts are the canonical ones:
``input_tokens`` (multimodal tokens included) and ``output_tokens`` (reasoning
included).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from servegen_ml.export import jsonl
from servegen_ml.export.hash_ids import ChainCarry, PrefixBlocks
from servegen_ml.trace.schema import MODALITIES, UNITS, list_lengths

MOONCAKE_BLOCK_TOKENS = 512
BAILIAN_BLOCK_TOKENS = 16
# Wall-clock time of the first request in the azure export (the format has no relative times).
AZURE_EPOCH = "2024-01-01 00:00:00"
AZURE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
# Bound the Arrow strings built per JSONL chunk.
MAX_ROWS_PER_CHUNK = 200_000
MAX_BLOCKS_PER_CHUNK = 4_000_000
# Rows per Parquet row group, fixed so the file does not depend on the chunks (small enough to buffer cheaply).
ROW_GROUP_ROWS = 1 << 18

PREFIX_RULE = (
    "a follow-up turn (same conversation_id, next turn) begins with the complete blocks of its predecessor's "
    "prompt (min(predecessor input_length // block, own block count)); all other blocks get fresh ids, "
    "counted from 0 in row order"
)


class FormatWriter:
    """Writes one file chunk by chunk: ``write(chunk, continues)`` for consecutive chunks of a trace
    sorted by arrival with its first request at 0 s, then ``close()`` returns the format's part of the
    sidecar. ``continues[i]``: a later turn of row i's conversation follows in a later chunk (None: the
    trace is one chunk). The bytes do not depend on how the trace is cut into chunks."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = 0

    def write(self, df: pd.DataFrame, continues: np.ndarray | None = None) -> None:
        self._write(df, continues)
        self.rows += len(df)

    def _write(self, df: pd.DataFrame, continues: np.ndarray | None) -> None:
        raise NotImplementedError

    def close(self) -> dict:
        return {}

    def abort(self) -> None:
        """Release the file after an error (the caller removes it)."""


@dataclass(frozen=True)
class ExportFormat:
    name: str
    writer: type[FormatWriter]
    used_by: str
    block_tokens: int = 0  # tokens per prompt block id (formats that list hash_ids)

    def write(self, df: pd.DataFrame, path: Path) -> dict:
        """Write a whole trace (sorted, first request at 0 s) to ``path``; the format's sidecar part."""
        writer = self.writer(path)
        try:
            writer.write(df)
            return writer.close()
        except BaseException:
            writer.abort()
            raise


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


def _field(values) -> pa.Array:
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        return jsonl.number_field(values)
    return jsonl.string_field(np.asarray(values))


class NativeWriter(FormatWriter):
    """Parquet, JSONL or CSV by extension; Parquet row groups hold ROW_GROUP_ROWS rows whatever the chunks."""

    def __init__(self, path: Path):
        from servegen_ml.trace.writers import TraceWriter

        super().__init__(path)
        self._writer = TraceWriter(path).__enter__()
        self._pending: list[pd.DataFrame] = []
        self._pending_rows = 0
        self.columns: list[str] | None = None

    def _write(self, df: pd.DataFrame, continues) -> None:
        if self.columns is None:
            self.columns = list(df.columns)
        if self._writer.container != "parquet":
            self._writer.write(df)
            return
        self._pending.append(df)
        self._pending_rows += len(df)
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        whole = pd.concat(self._pending, ignore_index=True) if len(self._pending) > 1 else self._pending[0]
        cut = len(whole) if final else len(whole) // ROW_GROUP_ROWS * ROW_GROUP_ROWS
        for start in range(0, cut, ROW_GROUP_ROWS):
            self._writer.write(whole.iloc[start : min(start + ROW_GROUP_ROWS, cut)])
        rest = whole.iloc[cut:]
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)

    def close(self) -> dict:
        self._flush(final=True)
        self._writer.__exit__(None, None, None)
        columns = self.columns or []
        return {"units": {c: UNITS[c] for c in columns if c in UNITS}, "columns": columns}

    def abort(self) -> None:
        self._writer.__exit__(RuntimeError, RuntimeError("aborted"), None)


class _BlockJsonlWriter(FormatWriter):
    """JSONL with per-row fields plus ``hash_ids``; conversation chains carried across chunks."""

    block_tokens = 0

    def __init__(self, path: Path):
        super().__init__(path)
        self._fh = open(path, "wb")
        self._carry = ChainCarry()
        self._next_id = 0

    def _emit(self, blocks: PrefixBlocks, fields: dict[str, np.ndarray]) -> None:
        for start, stop in _row_chunks(blocks.blocks):
            counts, ids = blocks.rows(start, stop)
            text = {name: _field(values[start:stop]) for name, values in fields.items()}
            text["hash_ids"] = jsonl.list_field(counts, ids)
            jsonl.write_lines(self._fh, text)
        self._next_id = blocks.next_id

    def _blocks(self, tokens, predecessor, external) -> PrefixBlocks:
        carry = self._carry
        return PrefixBlocks(tokens, predecessor, self.block_tokens, self._next_id, external, carry.ids)

    def close(self) -> dict:
        self._fh.close()
        return self.meta()

    def abort(self) -> None:
        self._fh.close()

    def meta(self) -> dict:
        raise NotImplementedError


class MooncakeWriter(_BlockJsonlWriter):
    block_tokens = MOONCAKE_BLOCK_TOKENS

    def _write(self, df: pd.DataFrame, continues) -> None:
        predecessor, external, _ = self._carry.links(df)
        blocks = self._blocks(_ints(df, "input_tokens"), predecessor, external)
        fields = {
            # Round, not floor: 2.9999999 s from a ms-resolution source is 3000 ms.
            "timestamp": np.rint(df["timestamp"].to_numpy() * 1000.0).astype(np.int64),
            "input_length": _ints(df, "input_tokens"),
            "output_length": _ints(df, "output_tokens"),
        }
        self._emit(blocks, fields)
        if continues is not None:
            self._carry.update(df, predecessor, external, continues, {"position": np.ones(len(df))}, blocks)

    def meta(self) -> dict:
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


def _parent_values(carry: ChainCarry, name: str, own: np.ndarray, predecessor, external) -> np.ndarray:
    """Each row's predecessor's ``own`` value, in the chunk or carried (0 where it has none)."""
    out = np.zeros(len(predecessor), dtype=own.dtype)
    inside, outside = predecessor >= 0, external >= 0
    out[inside] = own[predecessor[inside]]
    if outside.any():
        out[outside] = carry.values[name][external[outside]]
    return out


# Units of the fields both Bailian flavours write the same way.
BAILIAN_UNITS = {
    "chat_id": "request index in file order",
    "turn": "1-based position in the conversation",
    "timestamp": "s since the first request (rounded to 1 us)",
    "output_length": "tokens",
    "type": "text | image | audio | video (first modality with items)",
}


def _bailian_fields(
    df: pd.DataFrame, chat_id, parent_chat_id, input_length, position
) -> dict[str, np.ndarray]:
    """The Bailian record of each row; the flavours differ only in ``parent_chat_id`` and ``input_length``."""
    return {
        "chat_id": chat_id,
        "parent_chat_id": parent_chat_id,
        "timestamp": np.round(df["timestamp"].to_numpy(dtype=np.float64), 6),
        "input_length": input_length,
        "output_length": _ints(df, "output_tokens"),
        "type": request_type(df),
        "turn": _ints(df, "turn") if "turn" in df.columns else position,
    }


class BailianWriter(_BlockJsonlWriter):
    block_tokens = BAILIAN_BLOCK_TOKENS

    def _write(self, df: pd.DataFrame, continues) -> None:
        carry = self._carry
        predecessor, external, position = carry.links(df)
        blocks = self._blocks(_ints(df, "input_tokens"), predecessor, external)
        chat_id = self.rows + np.arange(len(df), dtype=np.int64)
        parent = np.where((predecessor >= 0) | (external >= 0), 0, -1)
        parent += _parent_values(carry, "chat_id", chat_id, predecessor, external)
        # chat_id is the row index, so a predecessor's row index is its chat_id.
        self._emit(blocks, _bailian_fields(df, chat_id, parent, _ints(df, "input_tokens"), position))
        if continues is not None:
            values = {"chat_id": chat_id, "position": position}
            carry.update(df, predecessor, external, continues, values, blocks)

    def meta(self) -> dict:
        return {
            "units": {
                **BAILIAN_UNITS,
                "parent_chat_id": "chat_id of the previous turn, -1 for a first turn",
                "input_length": "tokens",
                "hash_ids": f"ids of {BAILIAN_BLOCK_TOKENS}-token prompt blocks, len = ceil(input_length / 16)",
            },
            "block_tokens": BAILIAN_BLOCK_TOKENS,
            "hash_ids_rule": PREFIX_RULE,
        }


class AiperfBailianWriter(_BlockJsonlWriter):
    """Bailian fields as AIPerf's ``bailian_trace`` loader reads them.

    AIPerf replays a ``parent_chat_id`` chain as one chat: each turn's prompt
    is sent after the previous turns' prompts and live answers, so its
    ``input_length`` must count only the new tokens. A follow-up whose prompt
    is not longer than its predecessor's prompt plus answer cannot be written
    that way and starts a new chain with its whole prompt.
    """

    block_tokens = BAILIAN_BLOCK_TOKENS

    def __init__(self, path: Path):
        super().__init__(path)
        self.restarted = 0

    def _write(self, df: pd.DataFrame, continues) -> None:
        carry = self._carry
        predecessor, external, position = carry.links(df)
        inputs, outputs = _ints(df, "input_tokens"), _ints(df, "output_tokens")
        has_parent = (predecessor >= 0) | (external >= 0)
        chat_id = self.rows + np.arange(len(df), dtype=np.int64)

        def parent(name, own):
            return _parent_values(carry, name, own, predecessor, external)

        new_tokens = inputs - np.where(has_parent, parent("input", inputs) + parent("output", outputs), 0)
        linked = has_parent & (new_tokens >= 1)
        # A restarted chain's whole prompt still begins with its unlinked predecessor's blocks.
        parent_linked = parent("linked", linked.astype(np.int64)).astype(bool)
        share = has_parent & ~linked & ~parent_linked
        sent = np.where(linked, new_tokens, inputs)
        blocks = self._blocks(sent, np.where(share, predecessor, -1), np.where(share, external, -1))
        parent_chat_id = np.where(linked, parent("chat_id", chat_id), -1)
        self._emit(blocks, _bailian_fields(df, chat_id, parent_chat_id, sent, position))
        self.restarted += int((has_parent & ~linked).sum())
        if continues is not None:
            values = {
                "chat_id": chat_id,
                "position": position,
                "input": inputs,
                "output": outputs,
                "linked": linked.astype(np.int64),
            }
            carry.update(df, predecessor, external, continues, values, blocks)

    def meta(self) -> dict:
        return {
            "units": {
                **BAILIAN_UNITS,
                "parent_chat_id": "chat_id of the previous turn, -1 where a chain starts",
                "input_length": "tokens new in this turn (the whole prompt where a chain starts)",
                "hash_ids": f"ids of the {BAILIAN_BLOCK_TOKENS}-token blocks of input_length",
            },
            "block_tokens": BAILIAN_BLOCK_TOKENS,
            "input_length_rule": (
                "a follow-up linked by parent_chat_id has input_length = its prompt - (predecessor's prompt + "
                "answer), since AIPerf sends the chain's earlier prompts and live answers before it; a follow-up "
                "whose prompt is not longer than that starts a chain (parent_chat_id -1, whole prompt)"
            ),
            "chains_restarted": self.restarted,
            "hash_ids_rule": "each row's new tokens get fresh block ids; a restarted chain begins with its "
            "unlinked predecessor's complete blocks",
        }


class _CsvWriter(FormatWriter):
    def __init__(self, path: Path):
        super().__init__(path)
        self._fh = open(path, "wb")
        self._header = False

    def _write(self, df: pd.DataFrame, continues) -> None:
        table = self.table(df)
        if not self._header:
            self._fh.write((",".join(table.column_names) + "\n").encode())
            self._header = True
        if table.num_rows:
            pacsv.write_csv(table, self._fh, pacsv.WriteOptions(include_header=False, quoting_style="none"))

    def table(self, df: pd.DataFrame) -> pa.Table:
        raise NotImplementedError

    def close(self) -> dict:
        if not self._header:
            self._write(
                pd.DataFrame(
                    {c: np.zeros(0, np.int64) for c in ("timestamp", "input_tokens", "output_tokens")}
                ),
                None,
            )
        self._fh.close()
        return self.meta()

    def abort(self) -> None:
        self._fh.close()


class VidurWriter(_CsvWriter):
    def table(self, df: pd.DataFrame) -> pa.Table:
        return pa.table(
            {
                "arrived_at": df["timestamp"].to_numpy(dtype=np.float64),
                "num_prefill_tokens": _ints(df, "input_tokens"),
                "num_decode_tokens": _ints(df, "output_tokens"),
            }
        )

    def meta(self) -> dict:
        return {
            "units": {
                "arrived_at": "s since the first request",
                "num_prefill_tokens": "tokens",
                "num_decode_tokens": "tokens",
            }
        }


class AzureWriter(_CsvWriter):
    def table(self, df: pd.DataFrame) -> pa.Table:
        epoch_us = np.datetime64(AZURE_EPOCH, "us").astype(np.int64)
        offset_us = np.rint(df["timestamp"].to_numpy(dtype=np.float64) * 1e6).astype(np.int64)
        wall = pa.array(epoch_us + offset_us, type=pa.timestamp("us"))
        return pa.table(
            {
                # Arrow's %S prints seconds with the microseconds of a us timestamp, i.e. %S.%f.
                "TIMESTAMP": pc.strftime(wall, format="%Y-%m-%d %H:%M:%S"),
                "ContextTokens": _ints(df, "input_tokens"),
                "GeneratedTokens": _ints(df, "output_tokens"),
            }
        )

    def meta(self) -> dict:
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
        ExportFormat("native", NativeWriter, "this project, pandas (Parquet, JSONL or CSV by extension)"),
        ExportFormat(
            "mooncake",
            MooncakeWriter,
            "vLLM bench serve --dataset-name timed_trace (--timed-trace-chunk-hash-size 512 "
            "--timed-trace-sec-multiplier 0.001); AIPerf --custom-dataset-type mooncake_trace (every row a "
            "single-turn request); GuideLLM run --data kind=mooncake (time_scale=0.001); see docs/replay.md",
            MOONCAKE_BLOCK_TOKENS,
        ),
        ExportFormat(
            "bailian",
            BailianWriter,
            "the Bailian trace's own meaning (input_length = whole prompt): GuideLLM run --data kind=mooncake "
            "(hash_id_block_size=16); vLLM bench serve --dataset-name timed_trace "
            "(--timed-trace-chunk-hash-size 16 --timed-trace-sec-multiplier 1); servegen-ml's bailian reader. "
            "Not AIPerf bailian_trace, which reads a follow-up's input_length as new tokens: use "
            "format=aiperf_bailian; see docs/replay.md",
            BAILIAN_BLOCK_TOKENS,
        ),
        ExportFormat(
            "aiperf_bailian",
            AiperfBailianWriter,
            "AIPerf --custom-dataset-type bailian_trace (follow-ups sent as multi-turn chats with the live "
            "answers in the history); see docs/replay.md",
            BAILIAN_BLOCK_TOKENS,
        ),
        ExportFormat("vidur", VidurWriter, "Vidur trace replay"),
        ExportFormat("azure", AzureWriter, "inference-perf trace replay"),
    )
}
