"""``azure``: Azure LLM inference traces (``AzureLLMInferenceTrace_{code,conv}*.csv``, 2023 and 2024).

Mapping:

* ``TIMESTAMP`` (a date-time string such as ``2023-11-16 18:15:46.6805900``,
  optionally with a UTC offset; read to microseconds) -> ``timestamp`` in
  seconds since the first row of the file (time zones converted to UTC);
* ``ContextTokens`` -> ``input_tokens``; ``GeneratedTokens`` -> ``output_tokens``;
* ``client_id``: one client, ``"azure"`` (option ``client_id``); the traces
  have no tenant ids. There are no conversations.

A ``TIMESTAMP`` that does not parse is reported with its row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from servegen_ml.trace.adapters.base import Adapter, constant_strings


class AzureAdapter(Adapter):
    name = "azure"
    column_map = {
        "TIMESTAMP": "timestamp",
        "ContextTokens": "input_tokens",
        "GeneratedTokens": "output_tokens",
    }
    string_columns = ("TIMESTAMP",)
    options = {"client_id": "azure"}

    @classmethod
    def matches(cls, columns: set[str]) -> bool:
        return {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= columns

    def __init__(self, source: str, **options):
        super().__init__(source, **options)
        self._first_ns: int | None = None

    def map_chunk(self, raw: pd.DataFrame, row_numbers: np.ndarray):
        df = self._renamed(raw)
        problems = []
        if "timestamp" in df:
            text = df["timestamp"]
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
            bad = (parsed.isna() & text.notna()).to_numpy()
            problems.append(("bad_datetime", "timestamp", bad))
            ns = parsed.dt.tz_localize(None).astype("datetime64[ns]").to_numpy().astype(np.int64)
            valid = ~parsed.isna().to_numpy()
            if self._first_ns is None and valid.any():
                self._first_ns = int(ns[np.argmax(valid)])
            seconds = (ns - (self._first_ns or 0)) / 1e9
            # Unparsed rows: NaN where empty (reported missing), 0 where garbage (reported bad_datetime).
            df["timestamp"] = np.where(valid, seconds, np.where(bad, 0.0, np.nan))
        df.insert(1, "client_id", constant_strings(self.opts["client_id"], len(df)))
        return df, problems
