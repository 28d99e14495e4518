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


def conversational_trace(seed: int = 0, duration_s: float = 14_400.0, max_turns: int = 12) -> pd.DataFrame:
    """A sorted canonical trace with planted conversations (``conversation_id``, ``turn``).

    Clients ``c0``-``c2`` open conversations as Poisson streams (0.06, 0.04 and
    0.02 per s) and continue each turn with probability 0.55, 0.35 and 0.65 (at
    most ``max_turns`` turns); ``tiny`` opens about 20 (continuation 0.5). The
    inter-turn gap is log-normal (sigma 0.5) with median ``20 s + 0.1 s`` per
    token of the previous output; a follow-up's input is the previous input +
    previous output + log-normal new tokens (median 55). Turns past the end are cut.
    """
    rng = np.random.default_rng(seed)
    clients = [("c0", 0.06, 0.55), ("c1", 0.04, 0.35), ("c2", 0.02, 0.65), ("tiny", 0.0015, 0.5)]
    names = ("timestamp", "client_id", "input_tokens", "output_tokens", "conversation_id", "turn")
    cols: dict[str, list] = {k: [] for k in names}

    def emit(name, conv, turn, t, prompt, answer):
        cols["timestamp"].append(t)
        cols["client_id"].append(np.full(len(t), name))
        cols["input_tokens"].append(prompt)
        cols["output_tokens"].append(answer)
        cols["conversation_id"].append(np.char.add(f"{name}-", conv.astype(str)))
        cols["turn"].append(np.full(len(t), turn))

    for name, rate, cont in clients:
        t = gamma_arrivals(rng, rate, 1.0, duration_s)
        n = len(t)
        prompt = np.round(np.exp(6.0 + 0.5 * rng.standard_normal(n))).astype(np.int64)
        answer = np.round(np.exp(5.0 + 0.7 * rng.standard_normal(n))).astype(np.int64) + 1
        alive = np.arange(n)
        emit(name, alive, 1, t.copy(), prompt.copy(), answer.copy())
        for turn in range(2, max_turns + 1):
            alive = alive[rng.random(len(alive)) < cont]
            arrival = t[alive] + np.exp(
                np.log(20.0 + 0.1 * answer[alive]) + 0.5 * rng.standard_normal(len(alive))
            )
            alive, arrival = alive[arrival < duration_s], arrival[arrival < duration_s]
            t[alive] = arrival
            prompt[alive] += answer[alive] + np.round(np.exp(4.0 + rng.standard_normal(len(alive)))).astype(
                np.int64
            )
            answer[alive] = np.round(np.exp(5.0 + 0.7 * rng.standard_normal(len(alive)))).astype(np.int64) + 1
            emit(name, alive, turn, arrival, prompt[alive], answer[alive])
    out = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.argsort(out["timestamp"], kind="stable")
    return make_trace({k: v[order] for k, v in out.items()})


def multimodal_conversational_trace(
    seed: int = 2, duration_s: float = 3600.0, items_seed: int = 2
) -> pd.DataFrame:
    """:func:`conversational_trace` with 0-2 images per request (256 or 576 tokens each, in the input)
    and half of every output as reasoning."""
    trace = conversational_trace(seed=seed, duration_s=duration_s)
    rng = np.random.default_rng(items_seed)
    counts = rng.choice([0, 1, 2], size=len(trace))
    tokens = rng.choice([256, 576], size=int(counts.sum()))
    items = np.bincount(np.repeat(np.arange(len(trace)), counts), weights=tokens, minlength=len(trace))
    trace["text_tokens"] = trace["input_tokens"]
    trace["input_tokens"] = trace["input_tokens"] + items.astype(np.int64)
    trace["image_tokens"] = make_list_column(counts, tokens)
    trace["reasoning_tokens"] = trace["output_tokens"] // 2
    return trace
