"""Sampling conversations for any generator: follow-up turns, assembly, the two upsampling modes (docs/conversations.md).

A generator that can (a) sample conversation *openers* for a spec (a
canonical trace of first turns) and (b) draw the marks of one request for a
client at a timeline position gets conversations this way:

1. :func:`conversation_plan` (:func:`upsample_plan`) turns the spec into the openers' spec and a time
   factor K; the openers' span starts ``burn_in_s`` early (:func:`with_burn_in`);
2. the generator samples openers for that spec;
3. :func:`sample_follow_ups` draws every conversation's later turns with a
   conversation model (:class:`~servegen_ml.conversations.turns.TurnModel`:
   the empirical :class:`~servegen_ml.conversations.empirical.ConversationModel`
   or the neural one), turn by turn
   and vectorized across conversations (one loop step per turn position, not
   per request): continue with the hazard ``h_k``; arrive one inter-turn gap
   (conditioned on the previous output) later; prompt = previous prompt +
   previous output + new tokens; output (and reasoning, items) from the
   generator's callback, which sees the follow-ups' clients and times, the
   turns before them and the grown prompt (:class:`FollowUpContext`);
4. :func:`conversations_from` merges openers and follow-ups into sorted rows
   with ``turn``, each row's conversation and whether a later turn follows;
5. the generation stream (:mod:`servegen_ml.generators.stream`) cuts off the
   burn-in, divides timestamps by K and numbers the conversations in order of
   their first row in the window. It samples openers one time unit at a time
   and carries the turns that fall past a unit's end into the units they fall in.

Upsampling (``spec.upsample``):

* ``conversations`` (default): K = 1; the rate control acts on the openers
  only, so a higher rate means more conversations while every inter-turn gap
  keeps its learned distribution. Follow-ups scale with their openers, so
  ``scale:k`` scales openers by k exactly; a constant or curve target is
  divided by the expected turns per conversation
  (:meth:`TurnModel.mean_turns`; a curve is then followed with the
  lag of the follow-ups behind their openers).
* ``compress``: openers at the natural rate over ``duration * K`` of the
  learned timeline, all timestamps divided by K, so inter-turn gaps (and the
  learned time-of-day pattern) shrink by K. K is k for ``scale:k``, and
  (mean target) / (natural aggregate rate) for a constant or curve target.

Window: conversations open from ``burn_in_s`` (the model's 99th percentile
of opener-to-turn time) before the spec's start, and only turns inside
``[0, duration_s)`` are kept, so the generated window starts in the steady
state, like a window cut from real traffic: its first turns include later
turns of conversations opened before it (``turn`` > 1 on the first row of a
``conversation_id``). A follow-up at or after the end is dropped and its
conversation ends there; truncation at the horizon is natural (a real trace
cut at that time looks the same). Before a learned timeline's start the
burn-in wraps to its end by whole wrap periods
(:func:`~servegen_ml.core.spec.wrap_period`), as times past the end do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from servegen_ml.compose.merge import merge_streams
from servegen_ml.compose.rate_control import curve_integral
from servegen_ml.conversations.turns import TurnModel, Turns
from servegen_ml.core.errors import UserError
from servegen_ml.core.spec import GenerationSpec, RateSpec, wrap_period
from servegen_ml.trace.schema import (
    INT_COLUMNS,
    LIST_COLUMNS,
    STRING_DTYPE,
    list_lengths,
    list_values,
    ordered_columns,
)


@dataclass(frozen=True)
class FollowUpContext:
    """What is known of follow-ups when their marks are drawn (one entry each)."""

    client_ids: np.ndarray
    timeline_s: np.ndarray  # learned-timeline position of the follow-up's arrival (not wrapped)
    previous: Turns  # the turns they follow (previous_timeline_s is previous.timeline_s)
    new_tokens: np.ndarray
    prompt_tokens: np.ndarray  # its grown prompt: previous prompt + previous answer + new tokens

    @property
    def previous_timeline_s(self) -> np.ndarray:
        return self.previous.timeline_s


# (follow-ups, rng) -> (integer columns, list columns as (counts, values)): a generator's follow-up marks.
MarksFn = Callable[[FollowUpContext, np.random.Generator], tuple[dict, dict]]


@dataclass(frozen=True)
class UpsamplePlan:
    """How a spec is met: sample openers for ``opener_spec``, drop the first ``burn_in_s``, divide times by ``time_factor``."""

    opener_spec: GenerationSpec
    time_factor: float
    burn_in_s: float = 0.0


@dataclass
class FollowUps:
    """Follow-up turns as columns; ``conversation`` is the row of the opener in the openers' trace."""

    conversation: np.ndarray
    position: np.ndarray
    timestamp: np.ndarray
    ints: dict[str, np.ndarray]
    lists: dict[str, tuple[np.ndarray, np.ndarray]]


def mean_target_rate(rate: RateSpec, duration_s: float, natural_rate_s: float | None) -> float:
    """The target's mean aggregate req/s over ``[0, duration_s)`` of the spec."""
    if rate.kind == "constant":
        return rate.value
    if rate.kind == "curve":
        return float((curve_integral(rate, duration_s) - curve_integral(rate, 0.0)) / duration_s)
    if natural_rate_s is None:
        raise ValueError("the natural rate is needed for a natural or scale target")
    return natural_rate_s * (rate.value if rate.kind == "scale" else 1.0)


def upsample_plan(
    spec: GenerationSpec, requests_per_opener: float = 1.0, natural_rate_s: float | None = None
) -> UpsamplePlan:
    """The openers' spec and time factor for ``spec`` (module docstring), without burn-in.

    ``requests_per_opener``: expected turns per conversation; ``natural_rate_s``:
    the generator's natural aggregate req/s (openers and follow-ups) over the
    spec's window. Both matter only for constant and curve targets.
    """
    rate = spec.rate
    absolute = rate.kind in ("constant", "curve")
    factor = 1.0
    if spec.upsample == "compress" and rate.kind == "scale":
        factor = rate.value
    elif spec.upsample == "compress" and absolute:
        if not natural_rate_s or natural_rate_s <= 0:
            raise UserError(
                f"upsample=compress with rate={rate.to_str()}: the generator has no natural traffic to compress"
            )
        factor = mean_target_rate(rate, spec.duration_s, None) / natural_rate_s
    if factor <= 0:
        raise UserError(f"rate={rate.to_str()}: a compressed workload needs a positive mean target rate")
    horizon_s = spec.duration_s * factor
    if absolute:
        # Openers carry the target divided by the follow-ups each brings; compress also stretches time by K.
        per_opener = factor * requests_per_opener
        if rate.kind == "constant":
            opener_rate = RateSpec(kind="constant", value=rate.value / per_opener)
        else:
            opener_rate = RateSpec(
                kind="curve",
                curve_t_s=tuple(t * factor for t in rate.curve_t_s),
                curve_rate=tuple(r / per_opener for r in rate.curve_rate),
            )
    elif spec.upsample == "compress":
        opener_rate = RateSpec()
    else:
        opener_rate = rate
    return UpsamplePlan(dataclasses.replace(spec, duration_s=horizon_s, rate=opener_rate), factor)


def with_burn_in(plan: UpsamplePlan, burn_in_s: float, learned_span_s: float) -> UpsamplePlan:
    """The plan with openers starting ``burn_in_s`` earlier (wrapped by whole periods before the timeline's start)."""
    spec = plan.opener_spec
    if burn_in_s <= 0:
        return plan
    period = wrap_period(learned_span_s)
    start_s = spec.start_s - burn_in_s
    start_s += np.ceil(max(-start_s, 0.0) / period) * period
    rate = spec.rate
    if rate.kind == "curve":
        rate = dataclasses.replace(rate, curve_t_s=tuple(t + burn_in_s for t in rate.curve_t_s))
    opener_spec = dataclasses.replace(
        spec, start_s=float(start_s), duration_s=spec.duration_s + burn_in_s, rate=rate
    )
    return dataclasses.replace(plan, opener_spec=opener_spec, burn_in_s=float(burn_in_s))


def sample_follow_ups(
    model: TurnModel,
    openers: pd.DataFrame,
    horizon_s: float,
    timeline_start_s: float,
    follow_up_marks: MarksFn,
    rng: np.random.Generator,
    max_turns: int | None = None,
) -> FollowUps:
    """Later turns of the conversations opened by ``openers`` (timestamps relative, like the openers').

    ``max_turns`` (default: none) ends every conversation at that many turns (a bound for simulations).
    """
    n = len(openers)
    client_ids = openers["client_id"].astype(str).to_numpy(dtype=object)
    code = model.client_codes(client_ids)
    t = openers["timestamp"].to_numpy(np.float64).copy()
    prompt = openers["input_tokens"].to_numpy(np.int64).copy()
    answer = openers["output_tokens"].to_numpy(np.int64).copy()
    steps: list[tuple] = []
    alive = np.arange(n)
    position = 1
    # One step per turn position; the step that finds no conversation left still records (empty) columns.
    while True:
        at = np.full(len(alive), position)
        turns = Turns(code[alive], at, prompt[alive], answer[alive], timeline_start_s + t[alive])
        go = rng.random(len(alive)) < model.continue_prob_after(turns)
        if max_turns is not None and position >= max_turns:
            go[:] = False
        alive, turns = alive[go], turns.take(go)
        arrival = t[alive] + model.sample_gap_after(turns, rng)
        inside = arrival < horizon_s
        alive, arrival, turns = alive[inside], arrival[inside], turns.take(inside)
        new_tokens = model.sample_new_tokens_after(turns, rng)
        grown = prompt[alive] + answer[alive] + new_tokens
        context = FollowUpContext(client_ids[alive], timeline_start_s + arrival, turns, new_tokens, grown)
        ints, lists = follow_up_marks(context, rng)
        ints = _grown_prompt(dict(ints), lists, grown)
        position += 1
        steps.append((alive, np.full(len(alive), position), arrival, ints, lists))
        if len(alive) == 0:
            return _concat_steps(steps)
        t[alive], prompt[alive], answer[alive] = arrival, ints["input_tokens"], ints["output_tokens"]


def _grown_prompt(ints: dict, lists: dict, grown: np.ndarray) -> dict:
    """Set the follow-up's input to the grown prompt; text is what its items do not cover."""
    if "output_tokens" not in ints:
        raise ValueError("follow_up_marks must return output_tokens")
    item_tokens = np.zeros(len(grown), dtype=np.int64)
    for counts, values in lists.values():
        owner = np.repeat(np.arange(len(grown)), counts)
        item_tokens += np.bincount(owner, weights=values, minlength=len(grown)).astype(np.int64)
    ints["input_tokens"] = np.maximum(grown, item_tokens)
    if "text_tokens" in ints:
        ints["text_tokens"] = ints["input_tokens"] - item_tokens
    return ints


def _concat_steps(steps: list[tuple]) -> FollowUps:
    ints = {k: np.concatenate([s[3][k] for s in steps]) for k in steps[0][3]}
    lists = {
        k: (np.concatenate([s[4][k][0] for s in steps]), np.concatenate([s[4][k][1] for s in steps]))
        for k in steps[0][4]
    }
    return FollowUps(
        conversation=np.concatenate([s[0] for s in steps]).astype(np.int64),
        position=np.concatenate([s[1] for s in steps]).astype(np.int64),
        timestamp=np.concatenate([s[2] for s in steps]),
        ints=ints,
        lists=lists,
    )


def assemble_rows(openers: pd.DataFrame, follow: FollowUps) -> tuple[pd.DataFrame, np.ndarray]:
    """Openers (turn 1) and follow-ups merged, sorted stably by arrival, and each row's opener row (int64)."""
    n = len(openers)
    codes, names = pd.factorize(openers["client_id"].astype(str), sort=False)
    ints = {"turn": np.r_[np.ones(n, dtype=np.int64), follow.position]}
    for name in ("input_tokens", "output_tokens", *INT_COLUMNS):
        if name in openers.columns and name not in ints:
            if name not in follow.ints:
                raise ValueError(f"follow_up_marks must return {name}, a column of the openers")
            ints[name] = np.r_[openers[name].to_numpy(np.int64), follow.ints[name]]
    lists = {}
    for name in LIST_COLUMNS:
        if name in openers.columns:
            if name not in follow.lists:
                raise ValueError(f"follow_up_marks must return {name}, a column of the openers")
            counts, values = follow.lists[name]
            lists[name] = (
                np.r_[list_lengths(openers[name]), counts],
                np.r_[list_values(openers[name]), values],
            )
    timestamp = np.r_[openers["timestamp"].to_numpy(np.float64), follow.timestamp]
    conversation = np.r_[np.arange(n), follow.conversation]
    df = merge_streams(timestamp, np.r_[codes, codes[follow.conversation]], list(names), ints, lists)
    # merge_streams sorts stably by timestamp; the same order labels the conversations.
    order = np.argsort(timestamp, kind="stable")
    return df, conversation[order].astype(np.int64)


def assemble_conversations(openers: pd.DataFrame, follow: FollowUps) -> pd.DataFrame:
    """One sorted canonical trace: openers (turn 1) and follow-ups, ``conversation_id`` = the opener's row."""
    df, conversation = assemble_rows(openers, follow)
    df["conversation_id"] = pd.array(conversation.astype(str), dtype=STRING_DTYPE)
    return df[ordered_columns(df.columns)]


def conversation_plan(
    spec: GenerationSpec,
    model: TurnModel,
    learned_span_s: float,
    natural_opener_rates: pd.Series | None = None,
) -> UpsamplePlan:
    """How ``spec`` is met with conversations: the openers' spec (burn-in included) and the time factor.

    ``learned_span_s`` is the generator's learned timeline span (for the
    burn-in's wrap). ``natural_opener_rates`` (client id -> natural opener
    req/s over the spec's window, for the clients generated) is needed for
    constant and curve targets.
    """
    if spec.rate.kind in ("constant", "curve") and natural_opener_rates is None:
        raise ValueError(f"rate={spec.rate.to_str()}: the generator must pass its natural opener rates")
    per_opener, natural_rate_s = 1.0, None
    if natural_opener_rates is not None:
        rates = natural_opener_rates
        per_opener = model.mean_turns(rates.index.to_numpy(dtype=object), rates.to_numpy(np.float64))
        natural_rate_s = float(rates.sum()) * per_opener
    plan = upsample_plan(spec, per_opener, natural_rate_s)
    return with_burn_in(plan, model.burn_in_s_, learned_span_s)


def conversations_from(
    openers: pd.DataFrame,
    model: TurnModel,
    plan: UpsamplePlan,
    follow_up_marks: MarksFn,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Whole conversations opened by ``openers`` (timestamps since the openers' spec start).

    Returns the rows sorted stably by arrival (with ``turn``), each row's
    conversation (the opener's row in ``openers``) and whether a later turn
    of its conversation follows it.
    """
    openers = openers.drop(columns=[c for c in ("conversation_id", "turn") if c in openers.columns])
    spec = plan.opener_spec
    follow = sample_follow_ups(model, openers, spec.duration_s, spec.start_s, follow_up_marks, rng)
    df, conversation = assemble_rows(openers, follow)
    turn = df["turn"].to_numpy(np.int64)
    by_turn = np.lexsort((turn, conversation))
    continues = np.zeros(len(df), dtype=bool)
    continues[by_turn[:-1]] = conversation[by_turn[1:]] == conversation[by_turn[:-1]]
    return df, conversation, continues
