"""The neural generator's model: a marked temporal point process per client stream.

* ``data/`` — a trace as per-client event sequences, chunking, normalizers (the
  Lightning data module is the only torch module there);
* ``model/`` — torch: distributions, encoder, heads, :class:`MarkedTPP`;
* ``training/`` — torch: the Lightning module, :func:`train_tpp`, scoring;
* ``sampling/`` — numpy only: the trained step, segment sampler and trace generation.

:mod:`~servegen_ml.neural.features` (written once for numpy and torch) and
:mod:`~servegen_ml.neural.state` (the checkpoint files) are shared.
Only torch-free names are re-exported here, so sampling a checkpoint never
imports torch (an import-linter contract checks it).
"""

from servegen_ml.neural.sampling import NumpyTPP, sample_trace
from servegen_ml.neural.state import NeuralState

__all__ = ["NeuralState", "NumpyTPP", "sample_trace"]
