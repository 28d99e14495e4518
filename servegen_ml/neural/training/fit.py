"""Train a :class:`MarkedTPP` on an :class:`EventStore` with Lightning.

Validation by interleaved time blocks (:mod:`servegen_ml.neural.data.validation`:
by default every 10th hour of the window validates; early stopping on the
validation NLL per event). Checkpoints, CSV logs with their learning-curve
PNG (``learning_curve.png``, drawn after every run whose logger writes a
``metrics.csv``) and resumption live under ``<default_root_dir>/<fingerprint>/``, where
the fingerprint hashes the model settings and the data, so re-running the same
command resumes from ``last.ckpt`` while a different run starts fresh. With
``default_root_dir: null`` a temporary directory is used and removed.

Trainer settings (the ``trainer`` config group) are instantiated with Hydra:
``_target_`` (the Lightning ``Trainer``), its ``callbacks`` and ``logger``
(each with its own ``_target_``; defaults in
:data:`servegen_ml.core.configs.TRAINER_BASE`), Lightning ``Trainer``
arguments, and three keys of ours: ``name`` (the trainer config file's),
``resume`` and ``num_threads`` (torch CPU
threads while training and scoring; null keeps torch's default — one thread
is much faster on a CPU shared with other busy processes). Under a subprocess-launched DDP
strategy (``strategy: ddp``) the extra processes raise :class:`WorkerFinished` once
training is done (their entry point exits 0);
only global rank 0 returns and writes the checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from servegen_ml.core.configs import TRAINER_BASE, NeuralConfig
from servegen_ml.core.errors import WorkerFinished
from servegen_ml.core.interrupt import Terminated
from servegen_ml.neural.data.events import EventStore
from servegen_ml.neural.data.normalizers import Normalizers, fit_normalizers, rate_curves
from servegen_ml.neural.data.validation import ValidationBlocks
from servegen_ml.neural.rate_level import fit_rate_level, unit_clock

# Settings that shape the network (the rest of the settings are training options).
ARCHITECTURE_KEYS = (
    "hidden",
    "embedding",
    "head_hidden",
    "time_components",
    "mark_components",
    "day_harmonics",
    "week_harmonics",
)

OUR_TRAINER_KEYS = ("name", "resume", "num_threads")


@dataclass
class TrainResult:
    model: dict  # MarkedTPP constructor arguments
    weights: dict[str, np.ndarray]  # its state dict (float32; spikes int64)
    normalizers: Normalizers
    rates: np.ndarray  # (C, bins) empirical req/s per client over the learned timeline
    span_s: float
    summary: dict  # epochs, best validation NLL, where logs went, ...


def train_tpp(store: EventStore, config: NeuralConfig, trainer: dict, seed: int) -> TrainResult:
    """Fit on ``store`` with the generator's ``config``; trainer: see module docstring."""
    from servegen_ml.neural.data.datamodule import EventDataModule
    from servegen_ml.neural.training.lightning_module import TPPLightningModule

    blocks = ValidationBlocks.for_window(store.window_start_s, store.window_end_s, config.val_fraction)
    span_s, bin_s = learned_span(store), config.rate_bin_s
    # Training sees the rates of training events only (validation bins interpolated).
    train_rates = rate_curves(store, bin_s, span_s, blocks)
    train_level = fit_rate_level(train_rates, bin_s, span_s)
    norm = fit_normalizers(
        store, unit_clock(train_level, bin_s, span_s), blocks, config.max_spikes, config.min_spike_share
    )
    rates = rate_curves(store, bin_s, span_s)
    model = {
        "n_clients": len(store.client_ids),
        "layout": store.layout.to_dict(),
        "spikes": norm.spikes,
        "activity_bins": rates.shape[1],
        "activity_bin_s": bin_s,
        **{k: getattr(config, k) for k in ARCHITECTURE_KEYS},
    }
    train, val = blocks.split(store)
    monitor = "val_nll" if len(val) else "train_nll_epoch"
    torch.manual_seed(seed)
    module = TPPLightningModule(model, lr=config.lr, weight_decay=config.weight_decay, monitor=monitor)
    module.tpp.set_normalizers(norm)
    module.tpp.init_mixtures(norm)
    module.tpp.set_activity(train_rates, span_s)
    module.tpp.set_rate_level(train_level)
    data = EventDataModule(
        store,
        train,
        val if len(val) else None,
        config.lanes,
        config.chunk_len,
        seed,
        config.cold_starts_per_client,
        config.cold_starts_per_hour,
    )
    fingerprint = _fingerprint(model, config.to_dict(), store)
    with (
        _run_dir(trainer.get("default_root_dir"), fingerprint) as run_dir,
        torch_threads(trainer.get("num_threads")),
    ):
        trainer_obj = _make_trainer(trainer, run_dir, monitor)
        ckpt_path = _resume_path(run_dir, trainer)
        try:
            trainer_obj.fit(module, datamodule=data, ckpt_path=ckpt_path)
        except SystemExit:
            # Lightning turns ^C and SIGTERM into SystemExit(1); give the caller the interrupt back.
            if not trainer_obj.interrupted:
                raise
            sigterm = getattr(getattr(trainer_obj, "_signal_connector", None), "received_sigterm", False)
            raise (Terminated if sigterm else KeyboardInterrupt)("training interrupted") from None
        if trainer_obj.global_rank != 0:
            # A subprocess-launched DDP worker: training is its only job; its entry point exits 0.
            raise WorkerFinished(f"rank {trainer_obj.global_rank} finished training")
        curve = _learning_curve(trainer_obj)
        best = trainer_obj.checkpoint_callback.best_model_path
        if best:
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
        summary = {
            "epochs": int(trainer_obj.current_epoch),
            "world_size": int(trainer_obj.world_size),
            "global_steps": int(trainer_obj.global_step),
            "monitor": monitor,
            "best_score": _float(trainer_obj.checkpoint_callback.best_model_score),
            "train_events": int(norm.train_events.sum()),
            "val_events": int(store.n_events - norm.train_events.sum()),
            "validation": blocks.to_dict(),
            "run_dir": str(run_dir) if trainer.get("default_root_dir") else None,
            "resumed_from": str(ckpt_path) if ckpt_path else None,
            "learning_curve": str(curve) if curve and trainer.get("default_root_dir") else None,
        }
    # The point process learned the gaps' shape; the level of the whole trace is the final one.
    module.tpp.set_activity(rates, span_s)
    module.tpp.set_rate_level(fit_rate_level(rates, bin_s, span_s))
    weights = {k: v.detach().cpu().numpy() for k, v in module.tpp.state_dict().items()}
    return TrainResult(
        model=model, weights=weights, normalizers=norm, rates=rates, span_s=span_s, summary=summary
    )


def learned_span(store: EventStore) -> float:
    """The learned timeline is [0, span_s): up to the last event of the training trace."""
    return max(float(store.window_end_s), 1e-3)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (None: unchanged), restoring the previous count."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _float(x) -> float | None:
    return None if x is None else float(x)


def _fingerprint(model: dict, settings: dict, store: EventStore) -> str:
    ids = hashlib.sha256("\n".join(store.client_ids).encode()).hexdigest()
    data = [
        store.n_events,
        store.window_start_s,
        store.window_end_s,
        ids,
        float(np.asarray(store.columns["time_s"][-1:]).sum()),
    ]
    blob = json.dumps([model, settings, data], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _run_dir:
    """The run directory: ``root/fingerprint`` (kept), or a temporary one (removed) when root is None."""

    def __init__(self, root, fingerprint: str):
        self.root, self.fingerprint, self.tmp = root, fingerprint, None

    def __enter__(self) -> Path:
        if self.root is None:
            self.tmp = tempfile.TemporaryDirectory(prefix="servegen-neural-")
            return Path(self.tmp.name)
        path = Path(self.root) / self.fingerprint
        path.mkdir(parents=True, exist_ok=True)
        return path

    def __exit__(self, *exc):
        if self.tmp is not None:
            self.tmp.cleanup()


def trainer_spec(trainer: dict) -> dict:
    """``trainer`` merged onto :data:`~servegen_ml.core.configs.TRAINER_BASE` (a plain dict).

    Older checkpoints' manifests name the early-stopping patience at the top level.
    """
    spec = OmegaConf.to_container(OmegaConf.merge(TRAINER_BASE, dict(trainer)), resolve=True)
    if "early_stopping_patience" in spec:
        spec["callbacks"]["early_stopping"]["patience"] = spec.pop("early_stopping_patience")
    return spec


def _make_trainer(trainer: dict, run_dir: Path, monitor: str):
    """The Lightning Trainer of ``trainer`` (``_target_``), its callbacks and logger, for one run."""
    from hydra.utils import get_class, instantiate

    spec = trainer_spec(trainer)
    callbacks = []
    for name, callback in spec.pop("callbacks").items():
        if callback is None:  # trainer.callbacks.NAME=null turns one off
            continue
        accepts = inspect.signature(get_class(callback["_target_"])).parameters
        run_args = {"monitor": monitor} if "monitor" in accepts else {}
        if name == "checkpoint":
            run_args["dirpath"] = str(run_dir / "checkpoints")
        callbacks.append(instantiate(callback, **run_args))
    logger = spec.pop("logger")
    logger = instantiate(logger, save_dir=str(run_dir)) if logger else False
    kwargs = {k: v for k, v in spec.items() if k not in OUR_TRAINER_KEYS}
    kwargs["default_root_dir"] = str(run_dir)
    if kwargs.get("enable_progress_bar") is None:
        # A progress bar only where someone watches: a terminal, not a log file.
        kwargs["enable_progress_bar"] = sys.stderr.isatty()
    kwargs.setdefault("enable_model_summary", False)
    return instantiate(kwargs, callbacks=callbacks, logger=logger)


def _learning_curve(trainer_obj) -> Path | None:
    """The run's learning-curve PNG, written next to the CSV log (None without a log or NLL rows)."""
    from servegen_ml.neural.training.learning_curve import write_learning_curve

    logger = trainer_obj.logger
    if logger is None or getattr(logger, "log_dir", None) is None:
        return None
    logger.save()
    metrics_csv = Path(logger.log_dir) / "metrics.csv"
    return write_learning_curve(metrics_csv) if metrics_csv.is_file() else None


def _resume_path(run_dir: Path, trainer: dict) -> str | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    return str(last) if trainer.get("resume", True) and last.is_file() else None
