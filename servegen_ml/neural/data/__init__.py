"""A trace as per-client event sequences (column files on disk), chunks and normalizers.

Torch-free except :mod:`~servegen_ml.neural.data.datamodule`, which is not re-exported here.
"""

from servegen_ml.neural.data.events import EventStore, MarkLayout, build_store, store_from_frame
from servegen_ml.neural.data.normalizers import Normalizers, fit_normalizers

__all__ = ["EventStore", "MarkLayout", "Normalizers", "build_store", "fit_normalizers", "store_from_frame"]
