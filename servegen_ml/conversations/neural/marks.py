"""Marks of neural follow-up turns: the TPP's own mark heads, at the client's cold-start state, given the grown prompt.

A follow-up is not an event of its client's stream (its arrival is the
conversation's), so its item and reasoning marks come from the state a fresh
stream of its client has after a start token at the previous turn's arrival —
the state the TPP was trained to start from (cold starts) — with the
inter-turn gap as the gap since that start. In conditioning order: item
counts and item tokens (TPP heads); the prompt is *given* (the grown prompt:
previous prompt + previous answer + new tokens, at least the items' tokens;
its text part is what the items do not cover); the output comes from the
conversation model's output head (it sees the turn before, the new tokens and
the prompt; see :mod:`servegen_ml.conversations.neural.heads` for why not the
TPP's); the reasoning part given prompt and output (TPP head).

:class:`FollowUpMarks` samples them in numpy (the ``follow_up_marks`` of
:mod:`servegen_ml.conversations.sampling`);
:func:`follow_up_log_prob` scores the TPP's parts of the same distributions
with the torch model (the generator adds the output head's). Both take raw
timeline positions: the models read a position's features at its phase inside
the learned span, and the gap in unit time between the raw positions (one
wrapped apart from the other would read as 0). A client the model has never
seen is the mean client (the mean of the client vectors).
"""

from __future__ import annotations

import numpy as np

from servegen_ml.conversations.sampling import FollowUpContext
from servegen_ml.neural import features as F
from servegen_ml.neural.rate_level import unit_clock
from servegen_ml.neural.sampling.numpy_tpp import NumpyTPP, RowBias
from servegen_ml.neural.sampling.segment_sampler import ClientTable


class FollowUpMarks:
    """``marks(context, rng)`` of follow-ups from a :class:`NumpyTPP` (module docstring)."""

    def __init__(self, tpp: NumpyTPP, clients: ClientTable, conversations):
        """``clients`` has one row per client of ``conversations`` (the NeuralConversationModel whose
        output head draws the output) and a last row for unseen clients."""
        self.tpp, self.clients, self.conversations = tpp, clients, conversations
        self.bias = tpp.client_bias(clients.offsets)

    def __call__(self, context: FollowUpContext, rng: np.random.Generator) -> tuple[dict, dict]:
        tpp, layout = self.tpp, self.tpp.layout
        # The conversation model's client codes index the same clients, unseen ones the last row.
        client = context.previous.code
        n = len(client)
        gm, gs = (
            self.clients.gap_mean[client].astype(np.float64),
            self.clients.gap_std[client].astype(np.float64),
        )
        h, emb_gates = tpp.client_rows(self.clients.embedding[client])
        previous = np.asarray(context.previous_timeline_s, np.float64)
        empty = {k: np.zeros(n) for k in layout.mark_columns()}
        x = tpp.event_features(
            previous, np.zeros(n), np.ones(n, dtype=bool), gm, gs, empty, self.clients.activity, client
        )
        projected = tpp.project(tpp.gru_step(h, x, emb_gates))
        bias = RowBias(self.bias, client)
        # The mark heads condition on the gap in the client's unit time (servegen_ml.neural.rate_level).
        to_unit = unit_clock(self.clients.level, tpp.activity_bin_s, tpp.activity_span_s)
        gap = np.maximum(
            to_unit(client, np.asarray(context.timeline_s, np.float64)) - to_unit(client, previous), 0.0
        )
        names = F.condition_names(layout)
        cond = np.zeros((n, len(names)), dtype=np.float32)
        cond[:, 0] = F.gap_feature(np, gap, gm, gs)
        cond[:, 1] = gap <= 0
        lists, item_total = {}, np.zeros(n, dtype=np.int64)
        for m in layout.modalities:
            counts, tokens, _ = tpp.sample_items(m, projected, bias, cond, names, rng)
            lists[f"{m}_tokens"] = (counts, tokens)
            item_total += np.bincount(np.repeat(np.arange(n), counts), weights=tokens, minlength=n).astype(
                np.int64
            )
        for m in layout.empty_modalities:
            lists[f"{m}_tokens"] = (np.zeros(n, dtype=np.int64), np.zeros(0, dtype=np.int64))
        grown = np.asarray(context.prompt_tokens, np.int64)
        # As the conversation layer sets it: the prompt holds at least the items.
        prompt = np.maximum(grown, item_total) if layout.items_in_input else grown
        base = prompt - item_total if layout.items_in_input else prompt
        self._given(cond, names, "input", base)
        new_tokens = np.asarray(context.new_tokens, np.int64) + (prompt - grown)
        output = self.conversations.sample_output_after(context.previous, new_tokens, prompt, rng)
        ints = {"output_tokens": output}
        if layout.has_reasoning:
            self._given(cond, names, "output", ints["output_tokens"])
            ints["reasoning_tokens"] = tpp.sample_reasoning(projected, cond, bias, ints["output_tokens"], rng)
        ints["input_tokens"] = prompt
        if layout.has_text_tokens:
            ints["text_tokens"] = base
        return ints, lists

    def _given(self, cond: np.ndarray, names: list[str], field: str, value: np.ndarray) -> None:
        """Write a known mark into the condition vector (what the later heads see)."""
        i = self.tpp.fields.index(field)
        cond[:, names.index(f"z_{field}")] = (np.log1p(value) - self.tpp.mark_mean[i]) / self.tpp.mark_std[i]


def follow_up_log_prob(tpp, store, clients: ClientTable, previous_s: np.ndarray):
    """Mark log-likelihood parts per store event of follow-ups (torch ``MarkedTPP``; module docstring).

    ``store``: the follow-ups as an EventStore (timeline positions); ``clients``: per-client
    inputs indexed like ``store.client_ids``; ``previous_s`` (n,) the previous
    turn's timeline position per store event. The ``time`` part returned is the
    cold-start gap's and ``output`` the TPP's output head's: the caller replaces both.
    """
    import torch

    from servegen_ml.neural.data.datamodule import to_tensors
    from servegen_ml.neural.training.scoring import client_tensors

    n = store.n_events
    client = store.client_of(np.arange(n))
    t = np.asarray(store.columns["time_s"][:n], np.float64)
    previous_s = np.asarray(previous_s, np.float64)
    batch = {
        "client": client,
        "reset": np.ones(n, dtype=bool),
        "mask": np.ones((n, 1), dtype=bool),
        "time_s": t[:, None],
        "gap_s": (t - previous_s)[:, None],
        "x_time_s": previous_s[:, None],
        "x_gap_s": np.zeros((n, 1)),
        "x_start": np.ones((n, 1), dtype=bool),
        "survival_s": np.full((n, 1), np.nan),
    }
    for name, col in store.columns.items():
        if name != "time_s":
            values = np.asarray(col[:n])
            batch[f"y_{name}"] = values[:, None]
            batch[f"x_{name}"] = np.zeros((n, 1), dtype=values.dtype)
    for m, (offsets, tokens) in store.items.items():
        offsets = np.asarray(offsets)
        batch[f"items_{m}"] = np.asarray(tokens[: offsets[n]], dtype=np.int64)
        batch[f"items_{m}_owner"] = np.repeat(np.arange(n), np.diff(offsets[: n + 1]))
    batch = to_tensors(batch)
    emb_all, gm_all, gs_all, act, lv, offsets = client_tensors(clients)
    c = batch["client"]
    emb, gm, gs = emb_all[c], gm_all[c], gs_all[c]
    with torch.no_grad():
        parts, _ = tpp(batch, emb, gm, gs, tpp.encoder.initial_state(emb), act, lv, offsets)
    return {name: value.numpy()[:, 0] for name, value in parts.items()}
