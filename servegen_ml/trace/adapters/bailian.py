"""``bailian``: Alibaba Bailian (Qwen) JSON Lines traces, e.g. ``qwen_traceA_blksz_16.jsonl``.

Mapping:

* ``timestamp`` (seconds) -> ``timestamp``;
* ``input_length`` -> ``input_tokens``; ``output_length`` -> ``output_tokens``;
* ``chat_id`` -> ``request_id`` (so duplicates are caught);
* ``parent_chat_id`` (-1 for a first turn) -> ``conversation_id``: the
  ``chat_id`` at the root of the parent chain, followed across chunks. A
  parent that is not in the file (the trace window cut it off) is taken as
  the root, so its children still share one conversation;
* ``turn`` -> ``turn`` as given;
* ``client_id``: one client, ``"bailian"`` (option ``client_id``); option
  ``client_by=type`` uses the request ``type`` (text, image, search, file) instead;
* ``hash_ids`` (16-token blocks) are not kept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from servegen_ml.core.errors import UserError
from servegen_ml.trace.adapters.base import Adapter, constant_strings, ids_as_strings
from servegen_ml.trace.conversations import _follow_chains
from servegen_ml.trace.keymap import KeyMap


class BailianAdapter(Adapter):
    name = "bailian"
    column_map = {
        "timestamp": "timestamp",
        "chat_id": "chat_id",
        "parent_chat_id": "parent_chat_id",
        "input_length": "input_tokens",
        "output_length": "output_tokens",
        "turn": "turn",
    }
    string_columns = ("type",)
    extra_rules = {"chat_id": "int", "parent_chat_id": "int"}
    unique_column = "chat_id"
    options = {"client_by": "none", "client_id": "bailian"}

    @classmethod
    def matches(cls, columns: set[str]) -> bool:
        return {"chat_id", "parent_chat_id", "input_length", "output_length"} <= columns

    def __init__(self, source: str, **options):
        super().__init__(source, **options)
        if self.opts["client_by"] not in ("none", "type"):
            raise UserError(f"client_by must be 'none' or 'type', got {self.opts['client_by']!r}")
        self._roots = KeyMap(width=1)  # chat_id -> root chat_id

    @property
    def required(self) -> tuple[str, ...]:
        return ("timestamp", "client_id", "input_tokens", "output_tokens", "chat_id", "parent_chat_id")

    @property
    def column_labels(self) -> dict[str, str]:
        labels = super().column_labels
        return {**labels, "client_id": "type"} if self.opts["client_by"] == "type" else labels

    def map_chunk(self, raw: pd.DataFrame, row_numbers: np.ndarray):
        df = self._renamed(raw)
        if self.opts["client_by"] == "none":
            df.insert(1, "client_id", constant_strings(self.opts["client_id"], len(df)))
        elif "type" in raw.columns:
            df.insert(1, "client_id", raw["type"].reset_index(drop=True))
        return df, []

    def finish_chunk(self, chunk: pd.DataFrame) -> pd.DataFrame:
        chat = chunk["chat_id"].to_numpy()
        parent = chunk["parent_chat_id"].to_numpy()
        root = self._resolve_roots(chat, parent)
        chunk["request_id"] = ids_as_strings(chat)
        chunk["conversation_id"] = ids_as_strings(root)
        return chunk.drop(columns=["chat_id", "parent_chat_id"])

    def _resolve_roots(self, chat: np.ndarray, parent: np.ndarray) -> np.ndarray:
        """Root chat_id of each row: parents in this chunk by pointer jumping, earlier ones from the map."""
        if len(chat) == 0:
            return chat
        order = np.argsort(chat, kind="stable")
        pos = np.minimum(np.searchsorted(chat[order], parent), len(chat) - 1)
        parent_row = order[pos]
        # Only a parent that arrived earlier counts, which also rules out cycles.
        in_chunk = (parent >= 0) & (chat[parent_row] == parent) & (parent_row < np.arange(len(chat)))
        found, earlier_root = self._roots.lookup(parent.view(np.uint64))
        # A row's base root: itself (first turn), its parent's known root, or the missing parent itself.
        base = np.where(parent < 0, chat, np.where(found, earlier_root[:, 0], parent))
        top, _ = _follow_chains(np.where(in_chunk, parent_row, -1))
        root = base[top]
        self._roots.update(chat.view(np.uint64), root[:, None])
        return root
