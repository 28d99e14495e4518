"""Lightning wrapper: truncated backpropagation through lanes of chunks, hidden state carried between batches."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch

from servegen_ml.core.errors import TrainingDivergedError
from servegen_ml.neural.model.tpp import MarkedTPP


class TPPLightningModule(L.LightningModule):
    """Minimizes the NLL per event (time, marks and window survival) of a :class:`MarkedTPP`."""

    def __init__(
        self,
        build: Callable[[], MarkedTPP],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        monitor: str = "val_nll",
        offset_lr_scale: float = 1.0,
    ):
        """``build()`` makes the model in ``configure_model``: its shape depends on statistics of the
        data, which under DDP exist only once every rank has set up its shard."""
        super().__init__()
        self.save_hyperparameters(ignore=["build"])
        self.build = build
        self.tpp: MarkedTPP | None = None
        self.lr, self.weight_decay, self.monitor = lr, weight_decay, monitor
        self.offset_lr_scale = offset_lr_scale
        # Per stage: each lane's last hidden state, detached (gradients stop at chunk borders).
        self._carry: dict[tuple[str, int], torch.Tensor] = {}
        self._val_sum = torch.zeros(2, dtype=torch.float64)  # validation NLL and events this epoch

    def configure_model(self) -> None:
        if self.tpp is None:
            self.tpp = self.build()
            self.tpp.compute_dtype = torch.float32

    def _nll(self, batch: dict, stage: str) -> tuple[torch.Tensor, int]:
        emb, gap_mean, gap_std = self.tpp.client_inputs(batch["client"])
        h0 = self.tpp.encoder.initial_state(emb)
        # Each lane group (datamodule.LaneDataset) carries its own lanes' state.
        key = (stage, int(batch["lane_group"]) if "lane_group" in batch else 0)
        carry = self._carry.get(key)
        if carry is not None and carry.shape == h0.shape:
            h0 = torch.where(batch["reset"].unsqueeze(1), h0, carry)
        parts, h_last = self.tpp(batch, emb, gap_mean, gap_std, h0)
        self._carry[key] = h_last.detach()
        n_events = int(batch["mask"].sum())
        total = torch.stack(list(parts.values())).sum()
        if not torch.isfinite(total):
            bad = ", ".join(name for name, part in parts.items() if not torch.isfinite(part).all())
            raise TrainingDivergedError("the point process", stage, self.global_step, float(-total), bad)
        return -total / max(n_events, 1), n_events

    def training_step(self, batch, batch_idx):
        nll, n = self._nll(batch, "train")
        self.log("train_nll", nll.float(), batch_size=max(n, 1), prog_bar=True, on_step=True, on_epoch=True)
        return nll.float()

    def validation_step(self, batch, batch_idx):
        nll, n = self._nll(batch, "val")
        self._val_sum += torch.tensor([float(nll) * n, n], dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        # Per event over every rank's validation events (ranks hold different clients, so a mean of
        # the ranks' means would weigh them wrongly); every rank logs the same value.
        total = self._val_sum.clone()
        self._val_sum.zero_()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        self.log("val_nll", float(total[0] / max(float(total[1]), 1.0)), prog_bar=True)

    def on_train_epoch_start(self) -> None:
        self._carry = {k: v for k, v in self._carry.items() if k[0] != "train"}

    def on_validation_epoch_start(self) -> None:
        self._carry = {k: v for k, v in self._carry.items() if k[0] != "val"}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        # The time head's columns of the offsets keep the base rate: Adam steps each entry by about
        # its group's rate, so their step is shrunk back by the scale (at 10x, mm-image burstiness
        # came out 1.67x the noise floor; at 1x, 0.48x with the marks' offsets still at 10x).
        offsets = self.tpp.heads.client_offsets.weight
        lo, hi = self.tpp.heads.slices["time"]
        before = offsets.detach()[:, lo:hi].clone()
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        with torch.no_grad():
            step = offsets[:, lo:hi] - before
            offsets[:, lo:hi] = before + step / self.offset_lr_scale

    def configure_optimizers(self):
        # The per-client head offsets learn at offset_lr_scale times the rate (NeuralConfig), the
        # time head's columns excepted (optimizer_step).
        offsets = [self.tpp.heads.client_offsets.weight]
        shared = [p for p in self.parameters() if p is not offsets[0]]
        groups = [{"params": shared}, {"params": offsets, "lr": self.lr * self.offset_lr_scale}]
        optimizer = torch.optim.Adam(groups, lr=self.lr, weight_decay=self.weight_decay)
        # Halve the step size when the monitored NLL stops improving (smooths the end of training).
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "strict": False},
        }
