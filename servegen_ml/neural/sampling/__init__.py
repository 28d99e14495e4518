"""Sampling a trained TPP in numpy (no torch): the step, many stream segments at once, whole traces."""

from servegen_ml.neural.sampling.generate import natural_rates, sample_trace, select_clients
from servegen_ml.neural.sampling.numpy_tpp import NumpyTPP
from servegen_ml.neural.sampling.segment_sampler import ClientTable

__all__ = ["ClientTable", "NumpyTPP", "natural_rates", "sample_trace", "select_clients"]
