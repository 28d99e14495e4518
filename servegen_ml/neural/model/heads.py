"""Output heads: one small MLP per distribution, all reading the history state.

Head ``j`` computes ``relu(W_h h + W_u u[:k_j] + b) -> raw parameters`` where
``u`` is the condition vector of the event being predicted and ``k_j`` how much
of it is already drawn (:func:`servegen_ml.neural.features.visible_prefix`).
The history projections of all heads are one matrix product. Each client also
has its own additive offset to every head's raw parameters (``client_offsets``):
its own spike weights, components and gap shape, read directly rather than
through the recurrent state, which drifts toward a pooled client when the
model runs free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class HeadSpec:
    name: str  # "time", a count field, or "reasoning"
    n_params: int  # raw outputs
    visible: int  # condition entries it sees
    loc_offset: int  # index of the first component location (for initialization)
    n_components: int


class HeadStack(nn.Module):
    def __init__(self, hidden: int, head_hidden: int, specs: list[HeadSpec], n_clients: int):
        super().__init__()
        self.specs = specs
        self.head_hidden = head_hidden
        # Where each head's raw parameters sit in a client's row of offsets (heads in order).
        ends = np.cumsum([s.n_params for s in specs])
        self.slices = {s.name: (int(e - s.n_params), int(e)) for s, e in zip(specs, ends, strict=True)}
        # Zero at the start: every client begins as the shared heads say.
        self.client_offsets = nn.Embedding(n_clients, sum(s.n_params for s in specs))
        nn.init.zeros_(self.client_offsets.weight)
        self.from_history = nn.Linear(hidden, head_hidden * len(specs))
        self.from_condition = nn.ModuleDict(
            {s.name: nn.Linear(s.visible, head_hidden, bias=False) for s in specs if s.visible > 0}
        )
        self.out = nn.ModuleDict({s.name: nn.Linear(head_hidden, s.n_params) for s in specs})
        self._init_outputs()

    def _init_outputs(self) -> None:
        # Start near a spread of unit mixtures so components do not collapse onto one location.
        for s in self.specs:
            layer = self.out[s.name]
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
            with torch.no_grad():
                k = s.n_components
                layer.bias[s.loc_offset : s.loc_offset + k] = torch.linspace(-1.5, 1.5, k)

    def project(self, history: Tensor) -> Tensor:
        """(..., H) -> (..., n_heads * head_hidden): every head's history term at once."""
        return self.from_history(history)

    def raw(self, name: str, projected: Tensor, condition: Tensor | None, offsets: Tensor | None) -> Tensor:
        """Raw parameters of head ``name`` from the projected history, the full condition vector and
        the clients' rows of offsets (``..., P``, broadcast against ``projected``; None: no offsets)."""
        j = next(i for i, s in enumerate(self.specs) if s.name == name)
        pre = projected[..., j * self.head_hidden : (j + 1) * self.head_hidden]
        spec = self.specs[j]
        if spec.visible > 0:
            pre = pre + self.from_condition[name](condition[..., : spec.visible])
        out = self.out[name](torch.relu(pre))
        if offsets is None:
            return out
        lo, hi = self.slices[name]
        return out + offsets[..., lo:hi]
