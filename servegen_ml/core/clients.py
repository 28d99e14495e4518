"""Client ids to the integer codes fitted models index their per-client tables with, and the
fitted clients a ``clients=`` spec draws on (shared by every generator with clients)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from servegen_ml.core.errors import UserError
from servegen_ml.core.spec import ClientSpec


def client_codes(clients, client_ids) -> np.ndarray:
    """Position of each id (as a string) in ``clients``; an unknown id gets ``len(clients)``.

    Models keep their population (mean or pooled) row at ``len(clients)``, so
    an unseen client is answered from it.
    """
    codes = pd.Index(clients).get_indexer(pd.Index(np.asarray(client_ids, dtype=object).astype(str)))
    return np.where(codes < 0, len(clients), codes).astype(np.int64)


def source_clients(
    clients: Sequence[str], spec: ClientSpec, rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    """(codes of the fitted ``clients`` the output clients copy, output client ids) for a client spec.

    ``all``: every fitted client; a list: those ids (an unknown id is an error); ``new:N``:
    :func:`new_client_sources`, ids ``new-0`` ... Each output client is an independent stream.
    """
    if spec.kind == "all":
        return np.arange(len(clients)), list(clients)
    if spec.kind == "list":
        codes = client_codes(clients, spec.ids)
        unknown = [c for c, code in zip(spec.ids, codes, strict=True) if code == len(clients)]
        if unknown:
            raise UserError(
                f"clients: unknown client ids {unknown[:5]}; this model has {len(clients)} clients "
                f"(e.g. {', '.join(list(clients)[:5])})"
            )
        return codes, list(spec.ids)
    return new_client_sources(len(clients), spec.n, rng), [f"new-{i}" for i in range(spec.n)]


def new_client_sources(n_clients: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Fitted clients that ``n`` new clients copy: a random set of real clients, not of requests.

    Every fitted client is equally likely (so most new clients are small and a
    few heavy, as in the real population; drawing in proportion to traffic
    would make nearly all of them heavy). Each fitted client is copied
    ``n // n_clients`` times, and a random subset of ``n % n_clients`` once
    more: ``new:C`` reproduces the fitted population exactly.
    """
    whole = np.tile(np.arange(n_clients), n // n_clients)
    rest = rng.choice(n_clients, size=n % n_clients, replace=False)
    return rng.permutation(np.concatenate([whole, rest]))
