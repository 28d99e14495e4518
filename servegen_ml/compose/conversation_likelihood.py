"""Per-event log-likelihood with conversations, in the M1 convention of :mod:`servegen_ml.generators.base`.

The model is the one :mod:`servegen_ml.compose.conversation_sampling`
samples: openers arrive as the generator's client streams; turn k of a
conversation is followed by another with probability ``h_k``, one inter-turn
gap later (given the previous output), with the prompt grown by new tokens.
Its likelihood, split per event (roles from
:func:`~servegen_ml.compose.conversations.conversation_roles`):

* opener: ``time`` and every mark as the generator scores a request of its
  stream, computed on the openers alone (the streams the generator fitted);
* follow-up: ``time`` = 0 and ``input_tokens`` = 0 (its arrival and prompt are
  conversation marks); its other marks as the generator scores them; and
  ``conversation`` = log h_{k-1} (the conversation went on) + log P(gap in its
  resolution step | previous output) + log P(new tokens);
* last turn of each conversation: ``conversation`` also gets
  ``log[(1 - h_k) + h_k * S(window_end - t)]`` — it stopped, or its next turn
  would have come after the window.

A follow-up whose prompt grew by less than the previous output is scored at 0
new tokens, as it was fitted. A trace without ``conversation_id`` is scored as
conversations of one turn.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from servegen_ml.compose.conversations import ConversationModel, ConversationRoles, conversation_roles
from servegen_ml.generators.base import TIME_RESOLUTION_S


def conversation_log_prob(
    model: ConversationModel,
    trace: pd.DataFrame,
    window_end_s: float,
    client_ids: np.ndarray | None = None,
    roles: ConversationRoles | None = None,
) -> np.ndarray:
    """The ``conversation`` part per event (nats); ``client_ids`` overrides the client labels."""
    roles = roles if roles is not None else conversation_roles(trace)
    labels = trace["client_id"].astype(str).to_numpy(dtype=object) if client_ids is None else np.asarray(client_ids)
    code = model.client_codes(labels[roles.opener_row])
    hazard_row = model.hazard_group(code)
    t = trace["timestamp"].to_numpy(np.float64)
    prompt = trace["input_tokens"].to_numpy(np.int64)
    answer = trace["output_tokens"].to_numpy(np.int64)
    lp = np.zeros(len(trace))
    f = np.flatnonzero(~roles.is_opener)
    p = roles.predecessor[f]
    lp[f] += np.log(model.continue_prob(hazard_row[f], roles.position[p]))
    lp[f] += model.log_gap(code[f], answer[p], t[f] - t[p])
    lp[f] += model.log_new_tokens(code[f], prompt[f] - prompt[p] - answer[p])
    last = np.flatnonzero(roles.is_last)
    h = model.continue_prob(hazard_row[last], roles.position[last])
    later = np.exp(model.log_sf_gap(code[last], answer[last], window_end_s - t[last]))
    lp[last] += np.log((1.0 - h) + h * later)
    return lp


def log_prob_with_conversations(
    model: ConversationModel,
    trace: pd.DataFrame,
    window_end_s: float | None,
    score_requests: Callable[[pd.DataFrame, float], pd.DataFrame],
    client_ids: np.ndarray | None = None,
) -> pd.DataFrame:
    """The generator's per-event frame with conversations (module docstring).

    ``score_requests(sub_trace, window_end_s)`` is the generator's scoring of
    requests as events of its streams (columns ``time``, marks, ``total``);
    it is called on the openers and on the follow-ups (whose ``time`` and
    ``input_tokens`` are then replaced).
    """
    n = len(trace)
    t = trace["timestamp"].to_numpy(np.float64)
    end_s = float(t.max()) + TIME_RESOLUTION_S if n else 0.0
    if window_end_s is not None:
        end_s = max(end_s, float(window_end_s))
    roles = conversation_roles(trace)
    parts: dict[str, np.ndarray] = {}
    for rows in (np.flatnonzero(roles.is_opener), np.flatnonzero(~roles.is_opener)):
        if len(rows) == 0:
            continue
        scored = score_requests(trace.iloc[rows].reset_index(drop=True), end_s).drop(columns="total")
        for name in scored.columns:
            parts.setdefault(name, np.zeros(n))[rows] = scored[name].to_numpy(np.float64)
    follow = ~roles.is_opener
    for name in ("time", "input_tokens"):
        if name in parts:
            parts[name][follow] = 0.0
    parts["conversation"] = conversation_log_prob(model, trace, end_s, client_ids, roles)
    out = pd.DataFrame(parts)
    out["total"] = out.sum(axis=1)
    return out
