"""Per-event log-likelihood with conversations, in the M1 convention of :mod:`servegen_ml.generators.base`.

The model is the one :mod:`servegen_ml.conversations.sampling`
samples: openers arrive as the generator's client streams; turn k of a
conversation is followed by another with probability ``h_k``, one inter-turn
gap later (given the previous output), with the prompt grown by new tokens.
Its likelihood, split per event (roles from
:func:`~servegen_ml.conversations.empirical.conversation_roles`):

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

from servegen_ml.conversations.empirical import ConversationRoles, conversation_roles
from servegen_ml.conversations.turns import TurnModel, Turns
from servegen_ml.core.spec import TIME_RESOLUTION_S


def conversation_log_prob(
    model: TurnModel,
    trace: pd.DataFrame,
    window_end_s: float,
    client_ids: np.ndarray | None = None,
    roles: ConversationRoles | None = None,
    origin_s: float = 0.0,
    turns: Turns | None = None,
) -> np.ndarray:
    """The ``conversation`` part per event (nats); ``client_ids`` overrides the client labels.

    ``origin_s``: the trace timestamp of the model's learned-timeline position 0;
    ``turns``: :func:`trace_turns` of the trace, when the caller has them.
    """
    roles = roles if roles is not None else conversation_roles(trace)
    turns = turns if turns is not None else trace_turns(model, trace, roles, client_ids, origin_s)
    t = trace["timestamp"].to_numpy(np.float64)
    prompt, answer = turns.input_tokens, turns.output_tokens
    lp = np.zeros(len(trace))
    f = np.flatnonzero(~roles.is_opener)
    p = roles.predecessor[f]
    before = turns_before(turns, roles)
    lp[f] += np.log(model.continue_prob_after(before))
    lp[f] += model.log_gap_after(before, t[f] - t[p])
    lp[f] += model.log_new_tokens_after(before, prompt[f] - prompt[p] - answer[p])
    last_rows = np.flatnonzero(roles.is_last)
    last = turns.take(last_rows)
    h = model.continue_prob_after(last)
    later = np.exp(model.log_sf_gap_after(last, window_end_s - t[last_rows]))
    lp[last_rows] += np.log((1.0 - h) + h * later)
    return lp


def trace_turns(
    model: TurnModel, trace: pd.DataFrame, roles: ConversationRoles, client_ids=None, origin_s: float = 0.0
) -> Turns:
    """Every row of ``trace`` as a turn (its conversation's client: the opener's)."""
    labels = (
        trace["client_id"].astype(str).to_numpy(dtype=object)
        if client_ids is None
        else np.asarray(client_ids)
    )
    code = model.client_codes(labels[roles.opener_row])
    t = trace["timestamp"].to_numpy(np.float64)
    prompt = trace["input_tokens"].to_numpy(np.int64)
    answer = trace["output_tokens"].to_numpy(np.int64)
    return Turns(code, roles.position, prompt, answer, t - origin_s)


def turns_before(turns: Turns, roles: ConversationRoles) -> Turns:
    """The turn before each follow-up (follow-ups: rows ``~roles.is_opener`` in order) of a trace's turns."""
    f = np.flatnonzero(~roles.is_opener)
    before = turns.take(roles.predecessor[f])
    # A conversation belongs to its opener's client (the predecessor's conversation is the same one).
    return Turns(turns.code[f], before.position, before.input_tokens, before.output_tokens, before.timeline_s)


# (the trace, follow-up rows, the turns before them, window end s) -> per-event frame of those rows.
FollowUpScorer = Callable[[pd.DataFrame, np.ndarray, Turns, float], pd.DataFrame]


def log_prob_with_conversations(
    model: TurnModel,
    trace: pd.DataFrame,
    window_end_s: float | None,
    score_requests: Callable[[pd.DataFrame, float], pd.DataFrame],
    client_ids: np.ndarray | None = None,
    score_follow_ups: FollowUpScorer | None = None,
    origin_s: float = 0.0,
) -> pd.DataFrame:
    """The generator's per-event frame with conversations (module docstring).

    ``score_requests(sub_trace, window_end_s)`` is the generator's scoring of
    requests as events of its streams (columns ``time``, marks, ``total``);
    it is called on the openers and, unless ``score_follow_ups`` is given, on
    the follow-ups (whose ``time`` and ``input_tokens`` are then replaced).
    ``score_follow_ups(trace, rows, before, window_end_s)`` scores follow-up
    marks that depend on the turn before (``before``: those turns, as the
    conversation model sees them; the neural generator's).
    """
    n = len(trace)
    t = trace["timestamp"].to_numpy(np.float64)
    end_s = float(t.max()) + TIME_RESOLUTION_S if n else 0.0
    if window_end_s is not None:
        end_s = max(end_s, float(window_end_s))
    roles = conversation_roles(trace)
    turns = trace_turns(model, trace, roles, client_ids, origin_s)
    if score_follow_ups is None:

        def score_follow_ups(trace, rows, before, end_s):
            return score_requests(trace.iloc[rows].reset_index(drop=True), end_s)

    parts: dict[str, np.ndarray] = {}

    def put(rows: np.ndarray, frame: pd.DataFrame) -> None:
        for name in frame.columns.drop("total"):
            parts.setdefault(name, np.zeros(n))[rows] = frame[name].to_numpy(np.float64)

    openers, follow_rows = np.flatnonzero(roles.is_opener), np.flatnonzero(~roles.is_opener)
    if len(openers):
        put(openers, score_requests(trace.iloc[openers].reset_index(drop=True), end_s))
    if len(follow_rows):
        put(follow_rows, score_follow_ups(trace, follow_rows, turns_before(turns, roles), end_s))
    for name in ("time", "input_tokens"):
        if name in parts:
            parts[name][follow_rows] = 0.0
    parts["conversation"] = conversation_log_prob(model, trace, end_s, client_ids, roles, origin_s, turns)
    out = pd.DataFrame(parts)
    out["total"] = out.sum(axis=1)
    return out
