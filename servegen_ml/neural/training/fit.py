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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from servegen_ml.core.configs import TRAINER_BASE, NeuralConfig
from servegen_ml.core.errors import WorkerFinished
from servegen_ml.core.interrupt import fit_interruptibly
from servegen_ml.core.spec import TIME_RESOLUTION_S
from servegen_ml.neural.data.events import StoreSource
from servegen_ml.neural.data.normalizers import Normalizers
from servegen_ml.neural.data.validation import ValidationBlocks
from servegen_ml.neural.model.tpp import MarkedTPP
from servegen_ml.neural.rate_level import fit_rate_level

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


def train_tpp(source: StoreSource, config: NeuralConfig, trainer: dict, seed: int) -> TrainResult:
    """Fit on the trace of ``source`` with the generator's ``config``; trainer: see module docstring.

    Each DDP rank builds and trains on its own clients' shard (:mod:`servegen_ml.neural.data.datamodule`).
    """
    from servegen_ml.neural.data.datamodule import EventDataModule, prepare_shard
    from servegen_ml.neural.training.lightning_module import TPPLightningModule

    start_s, end_s = source.window_s
    blocks = ValidationBlocks.for_window(start_s, end_s, config.val_fraction)
    span_s, bin_s = learned_span(end_s), config.rate_bin_s
    shape = {
        "n_clients": len(source.client_ids),
        "layout": source.layout.to_dict(),
        "activity_bins": max(1, int(np.ceil(span_s / bin_s))),
        "activity_bin_s": bin_s,
        "gap_resolution_s": TIME_RESOLUTION_S,
        **{k: getattr(config, k) for k in ARCHITECTURE_KEYS},
    }
    data = EventDataModule(
        lambda: prepare_shard(
            source, blocks, shape, span_s, bin_s, config.max_spikes, config.min_spike_share
        ),
        config.lanes,
        config.chunk_len,
        seed,
        config.cold_starts_per_client,
        config.cold_starts_per_hour,
        config.cold_start_events,
    )

    def build():
        # The training rates and level: the model never sees a validation count.
        p = data.prepared
        torch.manual_seed(seed)
        tpp = MarkedTPP(**p.model)
        tpp.set_normalizers(p.norm)
        tpp.init_marks(p.client_marks, p.norm)
        tpp.set_activity(p.train_rates, span_s)
        tpp.set_rate_level(p.train_level)
        if p.val_events == 0:
            _monitor(trainer_obj, module, "train_nll_epoch")
        return tpp

    # Whether any event validates is known once the shards are set up; until then validation is assumed.
    monitor = "val_nll" if blocks.period else "train_nll_epoch"
    module = TPPLightningModule(
        build, config.lr, config.weight_decay, monitor, offset_lr_scale=config.offset_lr_scale
    )
    fingerprint = _fingerprint(shape, config.to_dict(), source)
    with (
        _run_dir(trainer.get("default_root_dir"), fingerprint) as run_dir,
        torch_threads(trainer.get("num_threads")),
    ):
        trainer_obj = _make_trainer(trainer, run_dir, monitor)
        ckpt_path = _resume_path(run_dir, trainer)
        started = time.perf_counter()
        fit_interruptibly(trainer_obj, module, datamodule=data, ckpt_path=ckpt_path)
        if trainer_obj.global_rank != 0:
            # A subprocess-launched DDP worker: training is its only job; its entry point exits 0.
            raise WorkerFinished(f"rank {trainer_obj.global_rank} finished training")
        prepared = data.prepared
        curve = _learning_curve(trainer_obj)
        best = trainer_obj.checkpoint_callback.best_model_path
        if best:
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
        norm = prepared.norm
        summary = {
            "epochs": int(trainer_obj.current_epoch),
            "world_size": int(trainer_obj.world_size),
            "shard_events": prepared.shard_events,
            "global_steps": int(trainer_obj.global_step),
            "fit_seconds": round(time.perf_counter() - started, 3),  # shards, statistics and training
            "monitor": module.monitor,
            "best_score": _float(trainer_obj.checkpoint_callback.best_model_score),
            "train_events": int(norm.train_events.sum()),
            "val_events": prepared.val_events,
            "validation": blocks.to_dict(),
            "run_dir": str(run_dir) if trainer.get("default_root_dir") else None,
            "resumed_from": str(ckpt_path) if ckpt_path else None,
            "learning_curve": str(curve) if curve and trainer.get("default_root_dir") else None,
        }
    # The point process learned the gaps' shape; the level of the whole trace is the final one.
    rates = prepared.rates
    module.tpp.set_activity(rates, span_s)
    module.tpp.set_rate_level(fit_rate_level(rates, bin_s, span_s))
    weights = {k: v.detach().cpu().numpy() for k, v in module.tpp.state_dict().items()}
    return TrainResult(
        model=prepared.model, weights=weights, normalizers=norm, rates=rates, span_s=span_s, summary=summary
    )


def _monitor(trainer_obj, module, metric: str) -> None:
    """Switch what the module's LR schedule and the trainer's callbacks (checkpoint, early stop) watch."""
    module.monitor = metric
    for callback in trainer_obj.callbacks:
        if getattr(callback, "monitor", None) is not None:
            callback.monitor = metric


def learned_span(window_end_s: float) -> float:
    """The learned timeline is [0, span_s): up to the last event of the training trace."""
    return max(float(window_end_s), 1e-3)


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


def _fingerprint(model: dict, settings: dict, source: StoreSource) -> str:
    """The run directory's name: the same on every rank (it hashes the whole trace's scan)."""
    data = source.fingerprint_data()
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
