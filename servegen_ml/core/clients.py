"""Client ids to the integer codes fitted models index their per-client tables with."""

from __future__ import annotations

import numpy as np
import pandas as pd


def client_codes(clients, client_ids) -> np.ndarray:
    """Position of each id (as a string) in ``clients``; an unknown id gets ``len(clients)``.

    Models keep their population (mean or pooled) row at ``len(clients)``, so
    an unseen client is answered from it.
    """
    codes = pd.Index(clients).get_indexer(pd.Index(np.asarray(client_ids, dtype=object).astype(str)))
    return np.where(codes < 0, len(clients), codes).astype(np.int64)
