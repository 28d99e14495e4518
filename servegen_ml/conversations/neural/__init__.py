"""The neural conversation model: heads on the TPP's client embedding and turn features.

:class:`NeuralConversationModel` (numpy, loaded from a checkpoint) implements
:class:`~servegen_ml.conversations.turns.TurnModel`; fitting
(:mod:`~servegen_ml.conversations.neural.fit`) and the torch heads
(:mod:`~servegen_ml.conversations.neural.heads`) import torch, so they are not
re-exported here.
"""

from servegen_ml.conversations.neural.model import NeuralConversationModel

__all__ = ["NeuralConversationModel"]
