"""``burstgpt``: BurstGPT CSV logs (Azure OpenAI usage at a university, ``BurstGPT_*.csv``).

Mapping:

* ``Timestamp`` (seconds) -> ``timestamp``;
* ``Request tokens`` -> ``input_tokens``; ``Response tokens`` -> ``output_tokens``;
* ``client_id`` from ``Model`` and ``Log Type`` (``"ChatGPT|Conversation log"``),
  because the two models and the two log types (chat UI vs API) are distinct
  workloads. Option ``client_by``: ``model_log_type`` (default), ``model``,
  ``log_type`` or ``none`` (one client, ``"burstgpt"``);
* ``Session ID`` (newer releases; optional) -> ``conversation_id``, and
  ``turn`` counts the session's requests in file order (1, 2, ...), across chunks;
  a row without a session is a one-request conversation ``row-<N>`` (N its file row).

``Total tokens`` is ignored (input + output). Rows with ``Response tokens`` 0
are failed requests in BurstGPT; they are kept as real arrivals with
``output_tokens`` 0 (they load the prefill side of a server), not dropped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from servegen_ml.core.errors import UserError
from servegen_ml.trace.adapters.base import Adapter, constant_strings, ids_as_strings, joined_strings
from servegen_ml.trace.keymap import KeyMap, hash_strings
from servegen_ml.trace.schema import STRING_DTYPE

CLIENT_BY = {
    "model_log_type": ("Model", "Log Type"),
    "model": ("Model",),
    "log_type": ("Log Type",),
    "none": (),
}


class BurstGPTAdapter(Adapter):
    name = "burstgpt"
    column_map = {
        "Timestamp": "timestamp",
        "Request tokens": "input_tokens",
        "Response tokens": "output_tokens",
        "Session ID": "conversation_id",
    }
    string_columns = ("Model", "Log Type", "Session ID")
    options = {"client_by": "model_log_type", "client_id": "burstgpt"}

    @classmethod
    def matches(cls, columns: set[str]) -> bool:
        return {"Timestamp", "Request tokens", "Response tokens"} <= columns

    def __init__(self, source: str, **options):
        super().__init__(source, **options)
        if self.opts["client_by"] not in CLIENT_BY:
            raise UserError(f"client_by must be one of {sorted(CLIENT_BY)}, got {self.opts['client_by']!r}")
        self._session_turns = KeyMap(width=1)  # session hash -> requests seen so far

    @property
    def column_labels(self) -> dict[str, str]:
        parts = CLIENT_BY[self.opts["client_by"]]
        return {**super().column_labels, **({"client_id": " | ".join(parts)} if parts else {})}

    def map_chunk(self, raw: pd.DataFrame, row_numbers: np.ndarray):
        df = self._renamed(raw)
        parts = CLIENT_BY[self.opts["client_by"]]
        missing = [p for p in parts if p not in raw.columns]
        if not parts:
            df.insert(1, "client_id", constant_strings(self.opts["client_id"], len(df)))
        elif not missing:
            df.insert(1, "client_id", joined_strings([raw[p].reset_index(drop=True) for p in parts], "|"))
        if "conversation_id" in df:
            # A row without a session is a conversation of its own, named after its file row.
            own = pd.Series(ids_as_strings(row_numbers)).radd("row-")
            df["conversation_id"] = df["conversation_id"].astype(STRING_DTYPE).fillna(own)
        return df, []

    def finish_chunk(self, chunk: pd.DataFrame) -> pd.DataFrame:
        if "conversation_id" not in chunk:
            return chunk
        # Turn = requests of the session so far (earlier chunks included) + position in this chunk.
        keys = hash_strings(chunk["conversation_id"])
        _, before = self._session_turns.lookup(keys)
        turn = before[:, 0] + pd.Series(keys).groupby(keys).cumcount().to_numpy() + 1
        chunk["turn"] = turn.astype(np.int64)
        self._session_turns.update(keys, turn[:, None])
        return chunk
