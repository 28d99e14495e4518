"""Conversations: multi-turn requests sampled and scored the same way whichever model fitted them.

The :class:`TurnModel` protocol (:mod:`~servegen_ml.conversations.turns`) is
what sampling (:mod:`~servegen_ml.conversations.sampling`), upsampling and the
``conversation`` likelihood part (:mod:`~servegen_ml.conversations.likelihood`)
ask of a model. Two implementations sit beside it: the empirical
:class:`ConversationModel` (:mod:`~servegen_ml.conversations.empirical`, used
by the naive and parametric generators, with :mod:`~servegen_ml.conversations.pool`
sampling their openers) and the neural heads (:mod:`servegen_ml.conversations.neural`).
See docs/conversations.md.
"""

from servegen_ml.conversations.empirical import ConversationModel, ConversationRoles, conversation_roles
from servegen_ml.conversations.fit import ConversationFitter, fit_conversations
from servegen_ml.conversations.likelihood import conversation_log_prob, log_prob_with_conversations
from servegen_ml.conversations.sampling import conversation_plan, sample_follow_ups
from servegen_ml.conversations.turns import TurnModel, Turns

__all__ = [
    "ConversationFitter",
    "ConversationModel",
    "ConversationRoles",
    "TurnModel",
    "Turns",
    "conversation_log_prob",
    "conversation_plan",
    "conversation_roles",
    "fit_conversations",
    "log_prob_with_conversations",
    "sample_follow_ups",
]
