"""The neural generator (DESIGN §4): a marked temporal point process per client stream.

One GRU-based model is shared by all clients and conditioned on a learned
client embedding and time-of-day / day-of-week features; its heads give the
gap to the client's next request (log-normal mixture plus a point mass for
simultaneous arrivals) and then, in order, the item counts and tokens per
item, the input (text) tokens, the output tokens and the reasoning part
(:mod:`servegen_ml.models.tpp`). Training runs with Lightning on chunks of
each client's stream (:mod:`servegen_ml.models.fit`); sampling runs the
trained step in numpy over many stream segments at once
(:mod:`servegen_ml.models.segment_sampler`); ``clients=new:N`` draws from a
traffic-weighted Gaussian mixture over the client embeddings.

``fit`` takes a canonical DataFrame, or a path to a trace file, which is
streamed chunk by chunk into memory-mapped columns (``store_dir``, default a
temporary directory) so traces larger than memory train.

Likelihood (M1): ``time`` is log P(gap in [g, g + 1 ms)) under the model,
with the survival to the window end on each client's last event; the window
starts at the trace's first event, whose client streams start from their
initial state. Marks are scored in the model's conditioning order, so with
multimodal items ``input_tokens`` is log P(text tokens | items) (equal to
log P(input | items), as input = text + items) and ``total`` is the joint.
A client unknown to the model is scored as the population's mean client.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from servegen_ml.generators.base import TIME_RESOLUTION_S, Generator
from servegen_ml.generators.spec import GenerationSpec

# Trace columns of each model part in log_prob's output.
PART_COLUMNS = {"time": "time", "input": "input_tokens", "output": "output_tokens", "reasoning": "reasoning_tokens"}


class NeuralGenerator(Generator):
    kind = "neural"

    def __init__(
        self,
        hidden: int = 64,
        embedding: int = 16,
        head_hidden: int = 64,
        time_components: int = 8,
        mark_components: int = 6,
        day_harmonics: int = 3,
        week_harmonics: int = 2,
        max_spikes: int = 256,
        min_spike_share: float = 0.0005,
        chunk_len: int = 128,
        lanes: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        val_fraction: float = 0.1,
        cold_starts_per_client: int = 16,
        cold_starts_per_hour: float = 1.0,
        seed: int = 0,
        population_components: int = 4,
        rate_bin_s: float = 600.0,
        segment_events: int = 256,
        warmup_events: int = 32,
        store_dir: str | None = None,
        trainer: dict | None = None,
    ):
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction}: must be in [0, 1)")
        if min(hidden, embedding, head_hidden, time_components, mark_components, chunk_len, lanes, segment_events) < 1:
            raise ValueError(
                "sizes (hidden, embedding, head_hidden, components, chunk_len, lanes, segment_events) must be >= 1"
            )
        self.settings = {
            "hidden": int(hidden),
            "embedding": int(embedding),
            "head_hidden": int(head_hidden),
            "time_components": int(time_components),
            "mark_components": int(mark_components),
            "day_harmonics": int(day_harmonics),
            "week_harmonics": int(week_harmonics),
            "max_spikes": int(max_spikes),
            "min_spike_share": float(min_spike_share),
            "chunk_len": int(chunk_len),
            "lanes": int(lanes),
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "val_fraction": float(val_fraction),
            "cold_starts_per_client": int(cold_starts_per_client),
            "cold_starts_per_hour": float(cold_starts_per_hour),
            "seed": int(seed),
            "population_components": int(population_components),
            "rate_bin_s": float(rate_bin_s),
            "segment_events": int(segment_events),
            "warmup_events": int(warmup_events),
            "store_dir": None if store_dir is None else str(store_dir),
        }
        self.trainer = dict(trainer or {"accelerator": "cpu", "devices": 1, "max_epochs": 20})
        self.state_ = None
        self._numpy_tpp = None
        self._torch_tpp = None

    # -- learning -----------------------------------------------------------------------------

    def fit(self, trace: pd.DataFrame | str | os.PathLike) -> NeuralGenerator:
        """Train on a canonical trace (DataFrame) or stream one from a trace file (path)."""
        from servegen_ml.data.events import build_store, store_from_frame

        if isinstance(trace, pd.DataFrame):
            store = store_from_frame(trace)
            return self._fit_store(store)
        from servegen_ml.trace.io import iter_trace_chunks

        path = Path(trace)
        with tempfile.TemporaryDirectory(prefix="servegen-store-", dir=self.settings["store_dir"]) as tmp:
            store = build_store(lambda: iter_trace_chunks(path), directory=tmp)
            return self._fit_store(store)

    def _fit_store(self, store) -> NeuralGenerator:
        from servegen_ml.models.fit import train_tpp
        from servegen_ml.models.population import fit_population
        from servegen_ml.models.state import NeuralState

        result = train_tpp(store, self.settings, self.trainer, self.settings["seed"])
        state = NeuralState(
            model=result.model,
            weights=result.weights,
            max_count=result.normalizers.max_count,
            normalizers=result.normalizers.to_json(),
            client_ids=list(store.client_ids),
            traffic=store.counts.astype(np.int64),
            rate_curves=result.rates,
            rate_bin_s=self.settings["rate_bin_s"],
            origin_s=float(store.origin_s),
            span_s=result.span_s,
            population=None,
            training=result.summary,
        )
        state.population = fit_population(
            state.client_vectors(), state.traffic, self.settings["population_components"], self.settings["seed"]
        )
        self._set_state(state)
        return self

    def _set_state(self, state) -> None:
        from servegen_ml.models.numpy_tpp import NumpyTPP

        self.state_ = state
        self._numpy_tpp = NumpyTPP(state.model, state.weights, state.max_count)
        self._torch_tpp = None

    # -- sampling -----------------------------------------------------------------------------

    def sample(self, spec: GenerationSpec, rng: np.random.Generator) -> pd.DataFrame:
        self._require_fitted()
        from threadpoolctl import threadpool_limits

        from servegen_ml.models.generate import sample_trace

        s = self.settings
        # The sampling step's matrix products are small: one BLAS thread is faster (much faster on a busy CPU).
        with threadpool_limits(limits=1, user_api="blas"):
            return sample_trace(self.state_, self._numpy_tpp, spec, rng, s["segment_events"], s["warmup_events"])

    # -- scoring ------------------------------------------------------------------------------

    def log_prob(self, trace: pd.DataFrame, window_end_s: float | None = None) -> pd.DataFrame:
        self._require_fitted()
        from servegen_ml.data.events import store_from_frame
        from servegen_ml.models.fit import torch_threads
        from servegen_ml.models.scoring import score_store

        state = self.state_
        self._check_fields(trace)
        ts = trace["timestamp"].to_numpy(np.float64)
        end = ts.max() + TIME_RESOLUTION_S if len(ts) else 0.0
        if window_end_s is not None:
            if window_end_s < ts.max():
                raise ValueError(f"window_end_s={window_end_s} is before the last event ({ts.max()})")
            end = max(end, float(window_end_s))
        store = store_from_frame(
            trace, client_ids=state.client_ids, layout=state.layout, origin_s=state.origin_s, window=(None, end)
        )
        emb, gap_mean, gap_std, activity = self._client_inputs(len(store.client_ids))
        with torch_threads(self.trainer.get("num_threads")):
            parts = score_store(self._torch_model(), store, emb, gap_mean, gap_std, activity)
        # Store order is (client, time); map back to the trace's row order.
        codes = pd.Index(store.client_ids).get_indexer(trace["client_id"].astype(str))
        order = np.lexsort((ts, codes))
        out = {}
        for name, values in parts.items():
            column = PART_COLUMNS.get(name, name)
            out[column] = np.empty(len(trace))
            out[column][order] = values
        df = pd.DataFrame(out)
        df["total"] = df.sum(axis=1)
        return df

    def _check_fields(self, trace: pd.DataFrame) -> None:
        layout = self.state_.layout
        need = [f"{m}_tokens" for m in layout.modalities] + (["reasoning_tokens"] if layout.has_reasoning else [])
        missing = [c for c in need if c not in trace.columns]
        if missing:
            raise ValueError(f"trace lacks {missing}, which this neural model was trained with and scores")

    def _client_inputs(self, n_clients: int):
        """Embedding, gap normalizer and activity rows per store client.

        Clients the model never saw are the population's mean client, always active at its mean rate.
        """
        state = self.state_
        known = len(state.client_ids)
        extra = np.repeat(state.population.mean()[None, :], n_clients - known, axis=0)
        v = np.concatenate([state.client_vectors(), extra])
        e = state.embedding_dim
        activity = np.concatenate([state.weights["activity"], state.flat_activity(extra[:, e + 2])])
        return v[:, :e], v[:, e], np.maximum(v[:, e + 1], 0.05), activity

    def _torch_model(self):
        if self._torch_tpp is None:
            import torch

            from servegen_ml.models.tpp import MarkedTPP

            model = MarkedTPP(**self.state_.model)
            model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.state_.weights.items()})
            self._torch_tpp = model.eval()
        return self._torch_tpp

    # -- checkpoint ---------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {**self.settings, "trainer": dict(self.trainer)}

    def _save_state(self, directory: Path) -> None:
        self.state_.save(directory)

    def _load_state(self, directory: Path) -> None:
        from servegen_ml.models.state import NeuralState

        self._set_state(NeuralState.load(Path(directory)))

    @property
    def is_fitted(self) -> bool:
        return self.state_ is not None

    @property
    def clients(self) -> tuple[str, ...]:
        self._require_fitted()
        return tuple(self.state_.client_ids)
