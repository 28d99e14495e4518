"""``mooncake``: Mooncake (Kimi) JSON Lines traces, e.g. the FAST'25 ``conversation_trace.jsonl``.

Mapping:

* ``timestamp`` (integer milliseconds from trace start) -> ``timestamp`` in seconds (/1000);
* ``input_length`` -> ``input_tokens``; ``output_length`` -> ``output_tokens``;
* ``client_id``: the traces carry no client or user ids, so every request gets
  one client, ``"mooncake"`` (option ``client_id``);
* ``hash_ids`` (512-token prefix-block hashes) -> ``conversation_id`` and
  ``turn`` by prefix inference (:mod:`servegen_ml.trace.conversations`:
  a request continues the earlier request whose complete blocks, at least
  two, begin its own list). The hashes themselves are not kept. Options:
  ``infer_conversations`` (default true), ``block_size`` (512),
  ``min_prefix_blocks`` (2). Without ``hash_ids`` no conversations are inferred.

Other keys are ignored. Inference follows file order, and Mooncake files are
sorted by time; on a file sorted only within chunks, a follow-up is still
found when its predecessor was read earlier.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from servegen_ml.trace.adapters.base import Adapter, constant_strings, ids_as_strings, scaled
from servegen_ml.trace.conversations import PrefixConversationInferrer


class MooncakeAdapter(Adapter):
    name = "mooncake"
    column_map = {
        "timestamp": "timestamp",
        "input_length": "input_tokens",
        "output_length": "output_tokens",
        "hash_ids": "hash_ids",
    }
    extra_rules = {"hash_ids": "list"}
    options = {
        "client_id": "mooncake",
        "infer_conversations": True,
        "block_size": 512,
        "min_prefix_blocks": 2,
    }

    @classmethod
    def matches(cls, columns: set[str]) -> bool:
        return {"timestamp", "input_length", "output_length"} <= columns and "chat_id" not in columns

    def __init__(self, source: str, **options):
        super().__init__(source, **options)
        self._inferrer = PrefixConversationInferrer(
            int(self.opts["block_size"]), int(self.opts["min_prefix_blocks"])
        )

    def map_chunk(self, raw: pd.DataFrame, row_numbers: np.ndarray):
        df = self._renamed(raw)
        if "timestamp" in df:
            df["timestamp"] = scaled(df["timestamp"], 1e-3)
        df.insert(1, "client_id", constant_strings(self.opts["client_id"], len(df)))
        return df, []

    def finish_chunk(self, chunk: pd.DataFrame) -> pd.DataFrame:
        if "hash_ids" not in chunk:
            return chunk
        if self.opts["infer_conversations"]:
            root, turn = self._inferrer.assign(chunk["hash_ids"], chunk["input_tokens"].to_numpy())
            chunk["conversation_id"] = ids_as_strings(root)
            chunk["turn"] = turn
        return chunk.drop(columns="hash_ids")
