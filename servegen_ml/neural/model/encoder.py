"""History encoder: a GRU over a client's past events, started from a client-specific state."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EventEncoder(nn.Module):
    """h_t = GRU([event features_t, client embedding], h_{t-1}); h_0 = tanh(W e_client + b)."""

    def __init__(self, event_dim: int, embedding_dim: int, hidden: int):
        super().__init__()
        self.initial = nn.Linear(embedding_dim, hidden)
        self.gru = nn.GRU(event_dim + embedding_dim, hidden, batch_first=True)

    def initial_state(self, embedding: Tensor) -> Tensor:
        """(B, E) -> (B, H)."""
        return torch.tanh(self.initial(embedding))

    def forward(self, events: Tensor, embedding: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        """events (B, T, F), embedding (B, E), h0 (B, H) -> states after each event (B, T, H), last (B, H).

        The recurrence always runs in float32: under bf16 autocast its gradients turn to NaN.
        """
        with torch.autocast(device_type=events.device.type, enabled=False):
            x = torch.cat([events, embedding.unsqueeze(1).expand(-1, events.shape[1], -1)], dim=-1).float()
            out, h_last = self.gru(x, h0.float().unsqueeze(0).contiguous())
        return out, h_last.squeeze(0)
