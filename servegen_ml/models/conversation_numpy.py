"""The neural conversation heads evaluated in numpy (float64) from their state dict: sampling without torch.

Log-probabilities build the torch distributions of
:mod:`servegen_ml.models.conversation_heads` from the same raw outputs (torch
is imported only then), so sampling and scoring use one distribution.
"""

from __future__ import annotations

import numpy as np

from servegen_ml.generators.base import TIME_RESOLUTION_S
from servegen_ml.models import features as F
from servegen_ml.models import sampling as S

# As in conversation_heads (kept here so sampling imports no torch).
JITTER_FLOOR = 1e-3


class NumpyConversationHeads:
    def __init__(
        self,
        weights: dict[str, np.ndarray],
        time_components: int,
        mark_components: int,
        max_new_tokens: int,
        max_output_tokens: int,
    ):
        w = {k: np.asarray(v) for k, v in weights.items()}
        self.layers = [
            (w[f"trunk.{i}.weight"].T.astype(np.float64), w[f"trunk.{i}.bias"].astype(np.float64)) for i in (0, 2)
        ]
        self.out = {
            name: (w[f"out_{name}.weight"].T.astype(np.float64), w[f"out_{name}.bias"].astype(np.float64))
            for name in ("continue", "gap", "new", "output")
        }
        self.output_from_hidden = (
            w["output_from_hidden.weight"].T.astype(np.float64),
            w["output_from_hidden.bias"].astype(np.float64),
        )
        self.output_from_condition = w["output_from_condition.weight"].T.astype(np.float64)
        self.spikes = w["spikes"].astype(np.int64)
        self.output_spikes = w["output_spikes"].astype(np.int64)
        for name in ("gap_log_mean", "gap_log_std", "new_mean", "new_std", "output_mean", "output_std"):
            setattr(self, name, float(w[name]))
        self.gap_quantum_s = float(w["gap_quantum_s"])
        self.jitter_ms, self.jitter_prob = w["jitter_ms"].astype(np.int64), w["jitter_prob"].astype(np.float64)
        self.kt, self.km = int(time_components), int(mark_components)
        self.max_new_tokens, self.max_output_tokens = int(max_new_tokens), int(max_output_tokens)

    def hidden(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, np.float64)
        for weight, bias in self.layers:
            h = np.maximum(h @ weight + bias, 0.0)
        return h

    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(continue logit (n,), gap raw (n, 1 + 3Kt), new-token raw (n, V + 1 + 3Km)) of features x (n, F)."""
        h = self.hidden(x)
        logit, gap, new = (h @ self.out[n][0] + self.out[n][1] for n in ("continue", "gap", "new"))
        return logit[:, 0], gap, new

    def raw_output(self, x: np.ndarray, condition: np.ndarray) -> np.ndarray:
        """Output head's raw parameters (n, V' + 1 + 3Km) of features x (n, F) and output conditions (n, 2)."""
        w, b = self.output_from_hidden
        pre = self.hidden(x) @ w + b + np.asarray(condition, np.float64) @ self.output_from_condition
        return np.maximum(pre, 0.0) @ self.out["output"][0] + self.out["output"][1]

    def sample_output(self, x: np.ndarray, condition: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raw = self.raw_output(x, condition)
        logits, comp, loc, log_scale = F.split_params(raw, len(self.output_spikes) + 1, self.km)
        loc, log_scale = F.destandardize(np, loc, log_scale, self.output_mean, self.output_std)
        floor = F.count_floor(self.output_mean, self.output_std)
        return S.sample_count(self.output_spikes, logits, comp, loc, log_scale, self.max_output_tokens, rng, floor)

    def log_output(self, x: np.ndarray, condition: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        import torch

        from servegen_ml.models.conversation_heads import count_distribution

        raw = torch.from_numpy(self.raw_output(x, condition))
        dist = count_distribution(_Buffers(self, torch), "output", raw, torch.float64)
        return dist.log_prob(torch.from_numpy(np.array(output_tokens, np.int64))).numpy()

    def continue_prob(self, x: np.ndarray) -> np.ndarray:
        logit, _, _ = self.raw(x)
        return 1.0 / (1.0 + np.exp(-logit))

    def sample_gap_s(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _, gap_raw, _ = self.raw(x)
        zero, comp, loc, log_scale = F.split_params(gap_raw, 1, self.kt)
        loc, log_scale = F.destandardize(np, loc, log_scale, self.gap_log_mean, self.gap_log_std)
        gap = S.sample_gap(zero[:, 0], comp, loc, log_scale, rng)
        if self.gap_quantum_s <= 0:
            return gap
        # On the lattice (conversation_heads.LatticeGap): round to a slot, add a jitter.
        q, res = self.gap_quantum_s, TIME_RESOLUTION_S
        cells = max(round(q / res), 1)
        uniform = rng.random(len(gap)) < JITTER_FLOOR
        anywhere = rng.integers(-(cells // 2), cells - cells // 2, size=len(gap))
        if len(self.jitter_ms):
            seen = self.jitter_ms[S.sample_categorical(np.log(np.tile(self.jitter_prob, (len(gap), 1))), rng)]
        else:
            seen = np.zeros(len(gap), dtype=np.int64)
        jitter_ms = np.where(uniform, anywhere, seen)
        return np.maximum(np.floor(gap / q + 0.5) * q + jitter_ms * res, 0.0)

    def sample_new_tokens(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _, _, new_raw = self.raw(x)
        logits, comp, loc, log_scale = F.split_params(new_raw, len(self.spikes) + 1, self.km)
        loc, log_scale = F.destandardize(np, loc, log_scale, self.new_mean, self.new_std)
        floor = F.count_floor(self.new_mean, self.new_std)
        return S.sample_count(self.spikes, logits, comp, loc, log_scale, self.max_new_tokens, rng, floor)

    def torch_distributions(self, x: np.ndarray):
        """(GapMixture, CountMixture) in float64 of features x."""
        import torch

        from servegen_ml.models.conversation_heads import distributions

        _, gap_raw, new_raw = self.raw(x)
        return distributions(_Buffers(self, torch), torch.from_numpy(gap_raw), torch.from_numpy(new_raw), torch.float64)

    def log_gap(self, x: np.ndarray, gap_s: np.ndarray) -> np.ndarray:
        import torch

        gap, _ = self.torch_distributions(x)
        return gap.log_prob(torch.from_numpy(np.array(gap_s, np.float64))).numpy()

    def log_sf_gap(self, x: np.ndarray, x_s: np.ndarray) -> np.ndarray:
        import torch

        gap, _ = self.torch_distributions(x)
        return gap.log_survival(torch.from_numpy(np.array(x_s, np.float64))).numpy()

    def log_new_tokens(self, x: np.ndarray, new_tokens: np.ndarray) -> np.ndarray:
        import torch

        _, new = self.torch_distributions(x)
        return new.log_prob(torch.from_numpy(np.array(new_tokens, np.int64))).numpy()


class _Buffers:
    """What :func:`~servegen_ml.models.conversation_heads.distributions` reads, as float64 / int64 tensors."""

    def __init__(self, heads: NumpyConversationHeads, torch):
        self.kt, self.km = heads.kt, heads.km
        self.spikes = torch.from_numpy(heads.spikes)
        self.output_spikes = torch.from_numpy(heads.output_spikes)
        self.gap_quantum_s = torch.tensor(heads.gap_quantum_s, dtype=torch.float64)
        self.jitter_ms, self.jitter_prob = torch.from_numpy(heads.jitter_ms), torch.from_numpy(heads.jitter_prob)
        for name in ("gap_log_mean", "gap_log_std", "new_mean", "new_std", "output_mean", "output_std"):
            setattr(self, name, torch.tensor(getattr(heads, name), dtype=torch.float64))
