"""The neural conversation heads evaluated in numpy (float64) from their state dict: sampling without torch.

Log-probabilities build the torch distributions of
:mod:`servegen_ml.conversations.neural.heads` from the same raw outputs (torch
is imported only then), so sampling and scoring use one distribution.
"""

from __future__ import annotations

import numpy as np

from servegen_ml.conversations.neural.features import JITTER_FLOOR
from servegen_ml.core.spec import TIME_RESOLUTION_S
from servegen_ml.neural import features as F
from servegen_ml.neural.sampling import draws as S


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
            (w[f"trunk.{i}.weight"].T.astype(np.float64), w[f"trunk.{i}.bias"].astype(np.float64))
            for i in (0, 2)
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
        self.jitter_ms, self.jitter_prob = (
            w["jitter_ms"].astype(np.int64),
            w["jitter_prob"].astype(np.float64),
        )
        self.kt, self.km = int(time_components), int(mark_components)
        self.max_new_tokens, self.max_output_tokens = int(max_new_tokens), int(max_output_tokens)

    def hidden(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, np.float64)
        for weight, bias in self.layers:
            h = np.maximum(h @ weight + bias, 0.0)
        return h

    def head(self, x: np.ndarray, name: str) -> np.ndarray:
        """Raw outputs of the ``continue``, ``gap`` or ``new`` head (n, ...) of features x (n, F)."""
        weight, bias = self.out[name]
        return self.hidden(x) @ weight + bias

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
        return S.sample_count(
            self.output_spikes, logits, comp, loc, log_scale, self.max_output_tokens, rng, floor
        )

    def log_output(self, x: np.ndarray, condition: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        return (
            self._count(self.raw_output(x, condition), "output")
            .log_prob(_tensor(output_tokens, np.int64))
            .numpy()
        )

    def continue_prob(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.head(x, "continue")[:, 0]))

    def sample_gap_s(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        zero, comp, loc, log_scale = F.split_params(self.head(x, "gap"), 1, self.kt)
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
            cdf = np.cumsum(self.jitter_prob)
            pick = np.searchsorted(cdf, rng.random(len(gap)) * cdf[-1], side="left")
            seen = self.jitter_ms[np.minimum(pick, len(cdf) - 1)]
        else:
            seen = np.zeros(len(gap), dtype=np.int64)
        jitter_ms = np.where(uniform, anywhere, seen)
        return np.maximum(np.floor(gap / q + 0.5) * q + jitter_ms * res, 0.0)

    def sample_new_tokens(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        logits, comp, loc, log_scale = F.split_params(self.head(x, "new"), len(self.spikes) + 1, self.km)
        loc, log_scale = F.destandardize(np, loc, log_scale, self.new_mean, self.new_std)
        floor = F.count_floor(self.new_mean, self.new_std)
        return S.sample_count(self.spikes, logits, comp, loc, log_scale, self.max_new_tokens, rng, floor)

    def log_gap(self, x: np.ndarray, gap_s: np.ndarray) -> np.ndarray:
        return self._gap(x).log_prob(_tensor(gap_s, np.float64)).numpy()

    def log_sf_gap(self, x: np.ndarray, x_s: np.ndarray) -> np.ndarray:
        return self._gap(x).log_survival(_tensor(x_s, np.float64)).numpy()

    def log_new_tokens(self, x: np.ndarray, new_tokens: np.ndarray) -> np.ndarray:
        return self._count(self.head(x, "new"), "new").log_prob(_tensor(new_tokens, np.int64)).numpy()

    def _gap(self, x: np.ndarray):
        """The gap head's torch distribution (float64) of features x."""
        import torch

        from servegen_ml.conversations.neural.heads import gap_distribution

        return gap_distribution(_Buffers(self, torch), torch.from_numpy(self.head(x, "gap")), torch.float64)

    def _count(self, raw: np.ndarray, name: str):
        """The ``new`` or ``output`` head's torch CountMixture (float64) of raw outputs."""
        import torch

        from servegen_ml.conversations.neural.heads import count_distribution

        return count_distribution(_Buffers(self, torch), name, torch.from_numpy(raw), torch.float64)


def _tensor(values, dtype):
    import torch

    return torch.from_numpy(np.array(values, dtype))


class _Buffers:
    """What :func:`~servegen_ml.conversations.neural.heads.distributions` reads, as float64 / int64 tensors."""

    def __init__(self, heads: NumpyConversationHeads, torch):
        self.kt, self.km = heads.kt, heads.km
        self.spikes = torch.from_numpy(heads.spikes)
        self.output_spikes = torch.from_numpy(heads.output_spikes)
        self.gap_quantum_s = torch.tensor(heads.gap_quantum_s, dtype=torch.float64)
        self.jitter_ms, self.jitter_prob = (
            torch.from_numpy(heads.jitter_ms),
            torch.from_numpy(heads.jitter_prob),
        )
        for name in ("gap_log_mean", "gap_log_std", "new_mean", "new_std", "output_mean", "output_std"):
            setattr(self, name, torch.tensor(getattr(heads, name), dtype=torch.float64))
