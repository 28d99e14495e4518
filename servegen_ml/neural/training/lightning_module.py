"""Lightning wrapper: truncated backpropagation through lanes of chunks, hidden state carried between batches."""

from __future__ import annotations

import lightning as L
import torch

from servegen_ml.neural.model.tpp import MarkedTPP


class TPPLightningModule(L.LightningModule):
    """Minimizes the NLL per event (time, marks and window survival) of a :class:`MarkedTPP`."""

    def __init__(self, model: dict, lr: float = 1e-3, weight_decay: float = 0.0, monitor: str = "val_nll"):
        super().__init__()
        self.save_hyperparameters()
        self.tpp = MarkedTPP(**model)
        self.tpp.compute_dtype = torch.float32
        self.lr, self.weight_decay, self.monitor = lr, weight_decay, monitor
        # Per stage: each lane's last hidden state, detached (gradients stop at chunk borders).
        self._carry: dict[str, torch.Tensor] = {}

    def _nll(self, batch: dict, stage: str) -> tuple[torch.Tensor, int]:
        emb, gap_mean, gap_std = self.tpp.client_inputs(batch["client"])
        h0 = self.tpp.encoder.initial_state(emb)
        carry = self._carry.get(stage)
        if carry is not None and carry.shape == h0.shape:
            h0 = torch.where(batch["reset"].unsqueeze(1), h0, carry)
        parts, h_last = self.tpp(batch, emb, gap_mean, gap_std, h0)
        self._carry[stage] = h_last.detach()
        n_events = int(batch["mask"].sum())
        total = torch.stack(list(parts.values())).sum()
        return -total / max(n_events, 1), n_events

    def training_step(self, batch, batch_idx):
        nll, n = self._nll(batch, "train")
        self.log("train_nll", nll.float(), batch_size=max(n, 1), prog_bar=True, on_step=True, on_epoch=True)
        return nll.float()

    def validation_step(self, batch, batch_idx):
        nll, n = self._nll(batch, "val")
        self.log("val_nll", nll.float(), batch_size=max(n, 1), prog_bar=True, on_epoch=True, sync_dist=True)

    def on_train_epoch_start(self) -> None:
        self._carry.pop("train", None)

    def on_validation_epoch_start(self) -> None:
        self._carry.pop("val", None)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        # Halve the step size when the monitored NLL stops improving (smooths the end of training).
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "strict": False},
        }
