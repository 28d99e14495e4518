"""What the conversation layer asks of a conversation model, whichever generator fitted it.

:func:`~servegen_ml.conversations.sampling.sample_follow_ups` and
:func:`~servegen_ml.conversations.likelihood.conversation_log_prob`
describe each turn that may be followed by a :class:`Turns` (its client, its
position in the conversation, its prompt and answer, when it arrived) and ask
the model about the turn after it through :class:`TurnModel`. A model uses
what it needs: the empirical :class:`~servegen_ml.conversations.empirical.ConversationModel`
reads the client, the position and the previous output; the neural one
(:mod:`servegen_ml.conversations.neural.model`) reads all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Turns:
    """Turns that may be followed, one entry each (arrays of one length)."""

    code: np.ndarray  # (n,) client codes (TurnModel.client_codes of the conversation's client)
    position: np.ndarray  # (n,) 1-based position of the turn in its conversation
    input_tokens: np.ndarray  # (n,) the turn's prompt
    output_tokens: np.ndarray  # (n,) the turn's answer
    timeline_s: np.ndarray  # (n,) learned-timeline position of the turn's arrival (not wrapped)

    def take(self, rows: np.ndarray) -> Turns:
        return Turns(*(np.asarray(getattr(self, f))[rows] for f in self.__dataclass_fields__))


class TurnModel(Protocol):
    """A fitted conversation model (the turn after each of ``turns``)."""

    burn_in_s_: float  # how far before a window conversations open (see conversations.sampling)

    def client_codes(self, client_ids) -> np.ndarray: ...

    def continue_prob_after(self, turns: Turns) -> np.ndarray:
        """P(another turn follows) per turn."""

    def sample_gap_after(self, turns: Turns, rng: np.random.Generator) -> np.ndarray:
        """Inter-turn gap (s, arrival to arrival) of the next turn, given that it follows."""

    def sample_new_tokens_after(self, turns: Turns, rng: np.random.Generator) -> np.ndarray:
        """New prompt tokens of the next turn (its prompt = prompt + answer + new tokens)."""

    def log_gap_after(self, turns: Turns, gap_s: np.ndarray) -> np.ndarray:
        """log P(gap in its resolution step) of the next turn."""

    def log_sf_gap_after(self, turns: Turns, x_s: np.ndarray) -> np.ndarray:
        """log P(gap >= x_s) of the next turn."""

    def log_new_tokens_after(self, turns: Turns, new_tokens: np.ndarray) -> np.ndarray:
        """log P(new tokens) of the next turn."""

    def mean_turns(self, client_ids, weights) -> float:
        """Expected turns per conversation, weighted over clients (rate accounting)."""
