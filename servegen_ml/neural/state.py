"""Everything a fitted neural generator learned, and its checkpoint files (no pickles, no torch).

Files in the checkpoint directory:

* ``model.safetensors`` — the :class:`MarkedTPP` state dict (weights and the
  normalizer buffers: per-client log-gap mean/std, per-field log1p mean/std,
  spike values);
* ``clients.safetensors`` — per-client traffic, empirical rate curves and the
  model's own rate curves (``model_rate_curves``, measured after training; absent
  in older checkpoints, which then calibrate rate targets with a pilot run);
* ``neural.json`` — model constructor arguments (layout, spikes), sampling caps,
  field normalizers, the client index, the timeline (origin, span), the client
  population (Gaussian mixture) and the training summary.

Loading reads these with ``safetensors.numpy`` and JSON only, so it does not
import torch (that alone takes seconds); the torch model is rebuilt only to score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from servegen_ml.neural.data.events import MarkLayout
from servegen_ml.neural.data.normalizers import flat_activity
from servegen_ml.neural.population import ClientPopulation

MODEL_FILE, CLIENTS_FILE, META_FILE = "model.safetensors", "clients.safetensors", "neural.json"


@dataclass
class NeuralState:
    model: dict  # MarkedTPP constructor arguments
    weights: dict[str, np.ndarray]  # MarkedTPP state dict
    max_count: dict[str, int]
    normalizers: dict  # field normalizers and spikes (readable copy; the buffers are in weights)
    client_ids: list[str]
    traffic: np.ndarray  # (C,) events per client in the training trace
    rate_curves: np.ndarray  # (C, bins) events/s per client over the learned timeline
    rate_bin_s: float
    origin_s: float  # trace timestamp of timeline position 0
    span_s: float  # learned span: positions [0, span_s)
    population: ClientPopulation
    training: dict
    # (C, bins) the trained model's own req/s per client over the learned timeline, same bins as
    # rate_curves (neural.sampling.generate.measure_rate_curves); None: not measured (older checkpoints).
    model_rate_curves: np.ndarray | None = None

    @property
    def layout(self) -> MarkLayout:
        return MarkLayout.from_dict(self.model["layout"])

    @property
    def embedding_dim(self) -> int:
        return self.weights["embedding.weight"].shape[1]

    def client_vectors(self) -> np.ndarray:
        """(C, E + 3): embedding, log-gap mean, log-gap std, log mean rate (the population's space)."""
        log_rate = np.log(np.maximum(self.traffic, 0.5) / self.span_s)
        w = self.weights
        return np.column_stack([w["embedding.weight"], w["gap_log_mean"], w["gap_log_std"], log_rate]).astype(
            np.float64
        )

    def flat_activity(self, log_rate: np.ndarray) -> np.ndarray:
        """Activity rows (N, bins) of clients known only by a mean log rate (new or unknown clients)."""
        w = self.weights
        mean, std = float(w["activity_log_mean"]), float(w["activity_log_std"])
        return flat_activity(log_rate, w["activity"].shape[1], mean, std, float(w["activity_span_s"]))

    def save(self, directory: Path) -> None:
        # np.array(copy) keeps 0-d buffers 0-d (np.ascontiguousarray would make them 1-d).
        save_file({k: np.array(v, order="C") for k, v in self.weights.items()}, str(directory / MODEL_FILE))
        clients = {
            "traffic": self.traffic.astype(np.int64),
            "rate_curves": self.rate_curves.astype(np.float32),
        }
        if self.model_rate_curves is not None:
            clients["model_rate_curves"] = self.model_rate_curves.astype(np.float32)
        save_file(clients, str(directory / CLIENTS_FILE))
        meta = {
            "model": self.model,
            "max_count": self.max_count,
            "normalizers": self.normalizers,
            "client_ids": self.client_ids,
            "rate_bin_s": self.rate_bin_s,
            "origin_s": self.origin_s,
            "span_s": self.span_s,
            "population": self.population.to_json(),
            "training": self.training,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> NeuralState:
        meta = json.loads((directory / META_FILE).read_text())
        clients = load_file(str(directory / CLIENTS_FILE))
        model_curves = clients.get("model_rate_curves")
        if model_curves is not None and model_curves.shape != clients["rate_curves"].shape:
            raise ValueError(
                f"{directory / CLIENTS_FILE}: model_rate_curves {model_curves.shape} do not match "
                f"rate_curves {clients['rate_curves'].shape}"
            )
        return cls(
            model=meta["model"],
            weights=load_file(str(directory / MODEL_FILE)),
            max_count={k: int(v) for k, v in meta["max_count"].items()},
            normalizers=meta["normalizers"],
            client_ids=list(meta["client_ids"]),
            traffic=clients["traffic"],
            rate_curves=clients["rate_curves"],
            rate_bin_s=float(meta["rate_bin_s"]),
            origin_s=float(meta["origin_s"]),
            span_s=float(meta["span_s"]),
            population=ClientPopulation.from_json(meta["population"]),
            training=meta["training"],
            model_rate_curves=model_curves,
        )
