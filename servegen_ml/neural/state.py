"""Everything a fitted neural generator learned, and its checkpoint files (no pickles, no torch).

Files in the checkpoint directory:

* ``model.safetensors`` — the :class:`MarkedTPP` state dict (weights and the
  normalizer buffers: per-client log-gap mean/std, per-field log1p mean/std,
  spike values, and the per-client rate level ``rate_level`` whose unit time the
  gaps are modelled in: :mod:`servegen_ml.neural.rate_level`);
* ``clients.safetensors`` — per-client traffic and empirical rate curves;
* ``neural.json`` — model constructor arguments (layout, spikes), sampling caps,
  field normalizers, the client index, the timeline (origin, span) and the training
  summary.

Loading reads these with ``safetensors.numpy`` and JSON only, so it does not
import torch (that alone takes seconds); the torch model is rebuilt only to score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from servegen_ml.core.checkpoint_checks import (
    check_array,
    check_ids,
    check_number,
    meta_field,
    read_json_object,
    read_safetensors,
)
from servegen_ml.core.errors import CheckpointError
from servegen_ml.neural.data.events import MarkLayout
from servegen_ml.neural.data.normalizers import flat_activity
from servegen_ml.neural.sampling.draws import RATIO_SPIKE_SCALE

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
    training: dict
    time_quantum_s: float = 0.0  # the slot the training trace's times are stamped in (0: none)

    @property
    def layout(self) -> MarkLayout:
        return MarkLayout.from_dict(self.model["layout"])

    @property
    def embedding_dim(self) -> int:
        return self.weights["embedding.weight"].shape[1]

    def client_vectors(self) -> np.ndarray:
        """(C, E + 3): embedding, log-gap mean, log-gap std, log mean rate."""
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
        save_file(clients, str(directory / CLIENTS_FILE))
        meta = {
            "model": self.model,
            "max_count": self.max_count,
            "normalizers": self.normalizers,
            "client_ids": self.client_ids,
            "rate_bin_s": self.rate_bin_s,
            "origin_s": self.origin_s,
            "span_s": self.span_s,
            "training": self.training,
            "time_quantum_s": self.time_quantum_s,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> NeuralState:
        """Read and check the three files (kinds, shapes, dtypes, finiteness, ranges, their agreement)."""
        meta_path = directory / META_FILE
        meta = read_json_object(meta_path, "neural model description")
        weights = read_safetensors(directory / MODEL_FILE)
        clients = read_safetensors(directory / CLIENTS_FILE)
        _check_state(directory, meta, weights, clients)
        return cls(
            model=meta["model"],
            weights=weights,
            max_count={k: int(v) for k, v in meta["max_count"].items()},
            normalizers=meta["normalizers"],
            client_ids=list(meta["client_ids"]),
            traffic=clients["traffic"],
            rate_curves=clients["rate_curves"],
            rate_bin_s=float(meta["rate_bin_s"]),
            origin_s=float(meta["origin_s"]),
            span_s=float(meta["span_s"]),
            training=meta["training"],
            time_quantum_s=float(meta.get("time_quantum_s", 0.0)),  # absent before it: no lattice
        )


def _check_state(directory: Path, meta: dict, weights: dict, clients: dict) -> None:
    meta_path, weights_path, clients_path = (
        directory / META_FILE,
        directory / MODEL_FILE,
        directory / CLIENTS_FILE,
    )
    model = meta_field(meta, "model", meta_path, dict)
    ids = check_ids(meta_field(meta, "client_ids", meta_path, list), meta_path, "client_ids")
    n = len(ids)
    for key in ("span_s", "rate_bin_s"):
        check_number(meta_field(meta, key, meta_path, (int, float)), meta_path, key, positive=True)
    check_number(meta_field(meta, "origin_s", meta_path, (int, float)), meta_path, "origin_s")
    for key in ("normalizers", "training", "max_count"):
        meta_field(meta, key, meta_path, dict)
    for name, value in meta["max_count"].items():
        check_number(value, meta_path, f"max_count.{name}", minimum=1)
    dims = {}
    for key in ("hidden", "embedding", "activity_bins", "n_clients"):
        dims[key] = int(
            check_number(meta_field(model, key, meta_path, int), meta_path, f"model.{key}", minimum=1)
        )
    if "time_quantum_s" in meta:
        check_number(meta["time_quantum_s"], meta_path, "time_quantum_s", minimum=0)
    if "gap_resolution_s" in model:  # absent in checkpoints from before it: gaps read as recorded
        check_number(model["gap_resolution_s"], meta_path, "model.gap_resolution_s", minimum=0)
    if dims["n_clients"] != n:
        raise CheckpointError(
            f"{meta_path}: model.n_clients={dims['n_clients']} but client_ids lists {n} clients"
        )
    if "rate_level" not in weights:
        raise CheckpointError(
            f"{weights_path}: tensor 'rate_level' is missing: a checkpoint from before the calibrated "
            "rate level, whose time head this version cannot sample; retrain it (servegen-ml train, "
            "or scripts/build_checkpoints.sh neural for the shipped ones)"
        )
    if model.get("layout", {}).get("has_reasoning") and "spikes_reasoning" not in weights:
        # A checkpoint from before the reasoning ratio's spikes: its head has none.
        weights["spikes_reasoning"] = np.zeros(0, dtype=np.int64)
    for name, array in weights.items():
        check_array(array, weights_path, name, kind="i" if name.startswith("spikes_") else "f")
    if "spikes_reasoning" in weights:
        check_array(
            weights["spikes_reasoning"], weights_path, "spikes_reasoning", shape=(None,),
            kind="i", minimum=0, maximum=RATIO_SPIKE_SCALE,
        )  # fmt: skip
    hidden, embedding = dims["hidden"], dims["embedding"]
    expected = {
        "embedding.weight": (n, embedding),
        "activity": (n, dims["activity_bins"]),
        "rate_level": (n, dims["activity_bins"]),
        "gap_log_mean": (n,),
        "gap_log_std": (n,),
        "activity_span_s": (),
        "activity_log_mean": (),
        "activity_log_std": (),
        "encoder.initial.weight": (hidden, embedding),
        "encoder.gru.weight_hh_l0": (3 * hidden, hidden),
        "encoder.gru.weight_ih_l0": (3 * hidden, None),
        "encoder.gru.bias_hh_l0": (3 * hidden,),
        "encoder.gru.bias_ih_l0": (3 * hidden,),
    }
    for name, shape in expected.items():
        if name not in weights:
            raise CheckpointError(f"{weights_path}: tensor '{name}' is missing")
        check_array(weights[name], weights_path, name, shape=shape)
    head_hidden = int(
        check_number(
            meta_field(model, "head_hidden", meta_path, int), meta_path, "model.head_hidden", minimum=1
        )
    )
    if "heads.from_history.weight" not in weights:
        raise CheckpointError(f"{weights_path}: tensor 'heads.from_history.weight' is missing")
    history = check_array(
        weights["heads.from_history.weight"], weights_path, "heads.from_history.weight", shape=(None, hidden)
    )
    if history.shape[0] % head_hidden:
        raise CheckpointError(
            f"{weights_path}: 'heads.from_history.weight' has {history.shape[0]} rows, not a multiple of head_hidden={head_hidden}"
        )
    for name, array in weights.items():
        # The heads read head_hidden features: from_condition writes them, out.* reads them.
        if name.startswith("heads.out.") and name.endswith(".weight"):
            check_array(array, weights_path, name, shape=(None, head_hidden))
        elif name.startswith("heads.from_condition.") and name.endswith(".weight"):
            check_array(array, weights_path, name, shape=(head_hidden, None))
    for name, array in weights.items():
        # Every linear layer's bias matches its weight's output size.
        if name.endswith(".weight") and name[: -len("weight")] + "bias" in weights:
            bias = name[: -len("weight")] + "bias"
            check_array(weights[bias], weights_path, bias, shape=(array.shape[0],))
    n_params = sum(len(a) for k, a in weights.items() if k.startswith("heads.out.") and k.endswith(".bias"))
    if "heads.client_offsets.weight" not in weights:
        # A checkpoint from before the per-client head offsets: its heads are those with offsets 0.
        weights["heads.client_offsets.weight"] = np.zeros((n, n_params), dtype=np.float32)
    check_array(
        weights["heads.client_offsets.weight"],
        weights_path,
        "heads.client_offsets.weight",
        shape=(n, n_params),
    )
    check_array(weights["gap_log_std"], weights_path, "gap_log_std", minimum=0.0)
    if not (weights["rate_level"] > 0).all():
        raise CheckpointError(f"{weights_path}: 'rate_level' must be positive everywhere")
    for key in ("traffic", "rate_curves"):
        if key not in clients:
            raise CheckpointError(f"{clients_path}: tensor '{key}' is missing")
    check_array(clients["traffic"], clients_path, "traffic", shape=(n,), kind="i", minimum=0)
    check_array(clients["rate_curves"], clients_path, "rate_curves", shape=(n, None), minimum=0.0)
