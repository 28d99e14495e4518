"""``native``: the canonical schema itself (docs/traces.md), as Parquet, CSV or JSON Lines.

Columns keep their names. In CSV, item lists are JSON arrays in one cell
(``"[256, 576]"``; ``[]`` for no items). A file without ``client_id`` is
rejected unless the ``client_id`` option names the one client it holds
(``+data.client_id=NAME`` on the command line). Columns outside the schema are
ignored with a warning.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from servegen_ml.trace.adapters.base import Adapter, constant_strings
from servegen_ml.trace.schema import COLUMN_ORDER, REQUIRED_COLUMNS, STRING_COLUMNS


class NativeAdapter(Adapter):
    name = "native"
    column_map = {c: c for c in COLUMN_ORDER}
    string_columns = STRING_COLUMNS
    options = {"client_id": None}

    @classmethod
    def matches(cls, columns: set[str]) -> bool:
        return {"timestamp", "input_tokens", "output_tokens"} <= columns

    def __init__(self, source: str, **options):
        super().__init__(source, **options)
        self._warned = False

    def map_chunk(self, raw: pd.DataFrame, row_numbers: np.ndarray):
        ignored = [c for c in raw.columns if c not in self.column_map]
        if ignored and not self._warned:
            warnings.warn(
                f"{self.source}: ignoring columns outside the trace schema: {ignored}", stacklevel=2
            )
            self._warned = True
        df = self._renamed(raw)
        if "client_id" not in df.columns and self.opts["client_id"] is not None:
            df.insert(1, "client_id", constant_strings(self.opts["client_id"], len(df)))
        return df, []


assert set(REQUIRED_COLUMNS) <= set(NativeAdapter.column_map)
