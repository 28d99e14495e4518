"""Step-cost model of one serving instance: Llama-3-8B, bf16, on one A100-SXM4-80GB (tensor parallel 1).

One engine step (iteration) processes ``n_tokens`` tokens: one per decoding
sequence plus the prefill chunks scheduled in the step. Its duration is

    step_s = linear(n_tokens) + lm_head + pairs * t_pair + kv_tokens * t_kv

* ``linear(n) = max(9.70 ms, 2.63 ms + 0.0659 ms * n)``: every per-token
  operator of the 32 layers except attention (layernorms, QKV and output
  projections, RoPE, gated MLP, residual add). Fitted to Vidur's A100 profile
  of Meta-Llama-3-8B (github.com/microsoft/vidur,
  ``data/profiling/compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv``, commit
  41ab8ab; medians per layer x 32 layers, TP=1), whose sums are 9.70 ms at 1
  token, 19.5 ms at 256, 33.0 ms at 400, 52.1 ms at 752 and 2161 ms at 32,768
  tokens; the fit gives 9.70, 19.5, 29.0, 52.2 and 2162 ms there.
* ``lm_head = 0.52 ms``: reading the 128,256 x 4,096 bf16 output embedding
  (1.05 GB) once per step at the A100-SXM4-80GB's 2,039 GB/s (NVIDIA A100
  datasheet); the profile above does not include it.
* ``t_pair = 1.68 ns`` per (query token, context token) pair of prefill
  attention: 4 x 32 layers x 32 heads x 128 head dim = 524,288 FLOPs per pair
  at the A100's 312 TFLOPS dense bf16 peak. A prompt of L tokens has
  L (L + 1) / 2 pairs however it is chunked.
* ``t_kv = 64.3 ns`` per context token read by decode attention: the K and V
  cache of Llama-3-8B is 2 x 32 layers x 8 KV heads x 128 x 2 bytes =
  131,072 bytes per token, read at 2,039 GB/s.

The attention and LM-head terms run at datasheet peaks, so they are lower
bounds. Other settings are choices of this simulator, not measurements: a
token budget of 512 tokens per step (chunked prefill), at most 256 running
sequences, and a KV cache of about 426,800 tokens
(90% of 80 GB, vLLM's default ``gpu_memory_utilization``, minus 16.06 GB of
weights, divided by 131,072 bytes). CPU scheduling overheads are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from servegen_ml.core.errors import UserError


@dataclass(frozen=True)
class ServingModel:
    """Cost model and scheduler limits of one instance (defaults: module docstring)."""

    linear_floor_s: float = 9.70e-3
    linear_base_s: float = 2.63e-3
    linear_per_token_s: float = 0.0659e-3
    lm_head_s: float = 0.52e-3
    prefill_pair_s: float = 1.68e-9
    decode_kv_token_s: float = 64.3e-9
    token_budget: int = 512
    max_running: int = 256
    kv_capacity_tokens: int = 426_800

    def __post_init__(self):
        if self.token_budget <= self.max_running:
            raise UserError(
                f"token_budget={self.token_budget} must exceed max_running={self.max_running} "
                "so that prefill always gets part of a step"
            )

    def faster(self, speedup: float) -> ServingModel:
        """The same instance with every step cost divided by ``speedup`` (limits unchanged)."""
        if speedup <= 0:
            raise UserError(f"speedup={speedup}: must be positive")
        return replace(
            self,
            linear_floor_s=self.linear_floor_s / speedup,
            linear_base_s=self.linear_base_s / speedup,
            linear_per_token_s=self.linear_per_token_s / speedup,
            lm_head_s=self.lm_head_s / speedup,
            prefill_pair_s=self.prefill_pair_s / speedup,
            decode_kv_token_s=self.decode_kv_token_s / speedup,
        )

    @property
    def min_step_s(self) -> float:
        """The shortest possible step (one token, no KV context)."""
        return self.linear_floor_s + self.lm_head_s

    def fixed_s(self, n_tokens: int) -> float:
        """Linear operators plus LM head for a step of ``n_tokens`` tokens."""
        return (
            max(self.linear_floor_s, self.linear_base_s + self.linear_per_token_s * n_tokens) + self.lm_head_s
        )

    def isolated_ttft_s(self, input_tokens: np.ndarray) -> np.ndarray:
        """Time to first token of each prompt alone on an idle instance (chunks of ``token_budget``)."""
        tokens = np.maximum(np.asarray(input_tokens, dtype=np.float64), 1.0)
        full, rest = np.divmod(tokens, self.token_budget)

        def fixed(n):
            return (
                np.maximum(self.linear_floor_s, self.linear_base_s + self.linear_per_token_s * n)
                + self.lm_head_s
            )

        linear = full * fixed(self.token_budget) + np.where(rest > 0, fixed(rest), 0.0)
        return linear + self.prefill_pair_s * tokens * (tokens + 1) / 2
