"""Small synthetic traces built in code with fixed seeds, shared by the tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from servegen_ml.trace.schema import make_list_column, make_trace


def gamma_arrivals(rng: np.random.Generator, rate: float, cv: float, duration_s: float) -> np.ndarray:
    """Arrival times of a Gamma renewal process with the given rate and inter-arrival CV."""
    shape = 1.0 / cv**2
    n = int(rate * duration_s * 1.5 + 50)
    t = np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), size=n))
    while t[-1] < duration_s:
        t = np.concatenate([t, t[-1] + np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), size=n))])
    return t[t < duration_s]


def synthetic_trace(
    seed: int = 0,
    duration_s: float = 3600.0,
    n_clients: int = 4,
    multimodal: bool = False,
    reasoning: bool = False,
) -> pd.DataFrame:
    """A sorted canonical trace: clients with distinct rates, CVs and length scales.

    Input and output are positively (not perfectly) correlated within a client.
    """
    rng = np.random.default_rng(seed)
    rates = 0.5 * 2.0 ** np.arange(n_clients)[::-1] / 2 ** (n_clients - 1) * 4  # heavy head
    cvs = np.linspace(0.7, 3.0, n_clients)
    cols: dict[str, list] = {"timestamp": [], "client_id": [], "input_tokens": [], "output_tokens": []}
    for c in range(n_clients):
        t = gamma_arrivals(rng, rates[c], cvs[c], duration_s)
        z = rng.standard_normal((len(t), 2))
        z[:, 1] = 0.6 * z[:, 0] + 0.8 * z[:, 1]
        cols["timestamp"].append(t)
        cols["client_id"].append(np.full(len(t), f"c{c}"))
        cols["input_tokens"].append(np.round(np.exp(6.0 + 0.4 * c + 0.8 * z[:, 0])).astype(np.int64))
        cols["output_tokens"].append(np.round(np.exp(4.5 + 0.7 * z[:, 1])).astype(np.int64) + 1)
    out = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.argsort(out["timestamp"], kind="stable")
    out = {k: v[order] for k, v in out.items()}
    n = len(order)
    if multimodal:
        counts = rng.choice([0, 1, 1, 2, 4], size=n)
        tokens = rng.choice([256, 576, 1024, 1280], size=int(counts.sum()))
        out["text_tokens"] = out["input_tokens"]
        image_sum = np.bincount(np.repeat(np.arange(n), counts), weights=tokens, minlength=n).astype(np.int64)
        out["input_tokens"] = out["text_tokens"] + image_sum
        out["image_tokens"] = make_list_column(counts, tokens)
    if reasoning:
        ratio = np.where(rng.random(n) < 0.3, 0.0, rng.beta(5, 2, size=n))
        out["reasoning_tokens"] = np.floor(ratio * out["output_tokens"]).astype(np.int64)
    return make_trace(out)
