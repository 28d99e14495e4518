"""Training and scoring the TPP with torch and Lightning."""

from servegen_ml.neural.training.fit import TrainResult, torch_threads, train_tpp
from servegen_ml.neural.training.scoring import score_store

__all__ = ["TrainResult", "score_store", "torch_threads", "train_tpp"]
