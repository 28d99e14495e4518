"""Generators: one interface (:class:`Generator`: fit, sample, log_prob, save, load), three kinds.

:mod:`~servegen_ml.generators.base` holds the interface, checkpoint directories
and the likelihood convention; ``naive``, ``parametric`` and ``neural`` implement
it; :mod:`~servegen_ml.generators.training` fits one from a ``train`` config.
"""

from servegen_ml.generators.base import (
    CheckpointError,
    Generator,
    NotFittedError,
    checkpoint_digest,
    load_generator,
    read_manifest,
    resolve_checkpoint,
    summarize_log_prob,
)
from servegen_ml.generators.naive import NaiveGenerator
from servegen_ml.generators.neural import NeuralGenerator
from servegen_ml.generators.parametric import ParametricGenerator

__all__ = [
    "CheckpointError",
    "Generator",
    "NaiveGenerator",
    "NeuralGenerator",
    "NotFittedError",
    "ParametricGenerator",
    "checkpoint_digest",
    "load_generator",
    "read_manifest",
    "resolve_checkpoint",
    "summarize_log_prob",
]
