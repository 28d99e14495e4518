"""The torch model: mixture distributions, the event encoder, the heads and :class:`MarkedTPP`."""

from servegen_ml.neural.model.tpp import MarkedTPP

__all__ = ["MarkedTPP"]
