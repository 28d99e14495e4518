"""Typed configuration: the generators' hyperparameters, written once, checked when configs compose.

Each dataclass is the single definition of a model group's keys, types and
defaults. :func:`register_configs` stores them in Hydra's ConfigStore as
``model/<kind>_base`` (with the generator class as ``_target_``); the files in
``configs/model/`` extend them, so a misspelt key or a value of the wrong type
fails when the config composes, not halfway through training.
:class:`NeuralConfig` is also what the neural generator and its training code
read (``generator.config_``), in place of a loose dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from servegen_ml.core.errors import UserError

NAIVE_TARGET = "servegen_ml.generators.naive.NaiveGenerator"
PARAMETRIC_TARGET = "servegen_ml.generators.parametric.ParametricGenerator"
NEURAL_TARGET = "servegen_ml.generators.neural.NeuralGenerator"


@dataclass
class NaiveConfig:
    """The paper's strawman: one aggregate stream, aggregate length distributions."""

    arrival: str = "poisson"  # poisson | gamma (one Gamma renewal stream with the aggregate gap CV)
    rate_window_s: float = 600.0


@dataclass
class ParametricConfig:
    """ServeGen's per-client method fitted from raw traces."""

    rate_window_s: float = 600.0  # per-client rate / CV / Gamma-or-Weibull window (s); should divide a day
    data_window_s: float = 21600.0  # per-client empirical length distributions window (s)
    min_events: int = 20  # windows with fewer requests fall back to the client's whole-trace fit


@dataclass
class NeuralConfig:
    """The neural generator: a marked temporal point process per client stream.

    Training options of the Lightning Trainer (epochs, devices, precision, DDP)
    are the ``trainer`` group's, not these.
    """

    # -- architecture
    hidden: int = 64  # GRU state size
    embedding: int = 16  # client embedding size
    head_hidden: int = 64  # hidden units of each output head
    time_components: int = 8  # log-normal components of the inter-arrival head
    # Normal components of each token/count head (on log(n + 1)). 12 rather than 6: a pool's clients
    # have sharp, many-moded length distributions (m-large held-out input NLL 5.70 -> 5.51; BENCHMARKS).
    mark_components: int = 12
    day_harmonics: int = 3  # Fourier harmonics of time of day
    week_harmonics: int = 2  # Fourier harmonics of day of week
    max_spikes: int = 256  # frequent exact values per field modelled by a categorical head
    min_spike_share: float = 0.0005  # a spike holds at least this share of a field's values
    # -- data and optimization
    chunk_len: int = 128  # events per chunk (truncated backpropagation length)
    lanes: int = 64  # chunks per batch (per device)
    lr: float = 0.001
    weight_decay: float = 0.0
    # Learning-rate multiplier of the mark heads' per-client offsets (the time head's keep the base
    # rate): each client's offsets learn only from its own events while the shared heads move under
    # every client's; at the base rate they lagged (mm-image hour, three multi-image clients:
    # P(one image) 0.45 at the start, 0.56-0.58 after 1,000 steps where the trace has 0.45-0.46;
    # x10: 0.45-0.46; docs/neural.md).
    offset_lr_scale: float = 10.0
    val_fraction: float = 0.1  # share of time validating: every 10th hour block (neural/data/validation.py)
    # Each epoch also trains on stream starts at random times (sampling starts its segments anywhere,
    # idle periods included): this many per client, plus this many per hour of its span.
    cold_starts_per_client: int = 16
    cold_starts_per_hour: float = 1.0
    # Events trained after each such start (about the sampler's warm-up): the part a warm stream's
    # chunks do not already teach; they run in short batches of their own (neural/data/datamodule.py).
    cold_start_events: int = 32
    seed: int = 0
    # -- after training and at sampling time
    rate_bin_s: float = 600.0  # resolution of each client's empirical rate curve (rate control)
    segment_events: int = 256  # expected events per sampled stream segment (batch row)
    warmup_events: int = 32  # expected warm-up events discarded before each segment
    store_dir: str | None = None  # a streamed trace file's event column files (None: system temp dir)
    # Turns per batch when training the conversation heads; None: 128, doubled while an epoch would
    # take more than 8,192 batches (at most 8,192 turns a batch; conversations/neural/fit.py).
    conversation_batch: int | None = None

    def __post_init__(self):
        # Values arrive from YAML, JSON manifests and Python: store each as its declared type.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                cast = {"int": int, "int | None": int, "float": float}.get(f.type, str)
                try:
                    setattr(self, f.name, cast(value))
                except (TypeError, ValueError):
                    raise UserError(f"{f.name}={value!r}: must be {cast.__name__}") from None
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"val_fraction={self.val_fraction}: must be in [0, 1)")
        sizes = (
            self.hidden,
            self.embedding,
            self.head_hidden,
            self.time_components,
            self.mark_components,
            self.chunk_len,
            self.lanes,
            self.segment_events,
        )
        if min(sizes) < 1:
            raise UserError(
                "sizes (hidden, embedding, head_hidden, components, chunk_len, lanes, segment_events) must be >= 1"
            )
        if self.conversation_batch is not None and self.conversation_batch < 1:
            raise UserError(
                f"conversation_batch={self.conversation_batch}: must be >= 1 (or null: by the turns)"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class NaiveModel(NaiveConfig):
    _target_: str = field(default=NAIVE_TARGET)


@dataclass
class ParametricModel(ParametricConfig):
    _target_: str = field(default=PARAMETRIC_TARGET)


@dataclass
class NeuralModel(NeuralConfig):
    _target_: str = field(default=NEURAL_TARGET)


# The Lightning Trainer, its callbacks and its logger, built from config with Hydra's instantiate.
# The training code adds what only a run knows: the run directory and the monitored metric.
# ``trainer/lightning_base`` in the ConfigStore; a trainer dict from Python is merged onto it.
TRAINER_BASE = {
    "_target_": "lightning.pytorch.Trainer",
    # Early stopping cannot end a run before this many optimizer steps (max_epochs/max_steps still
    # cap it): a short trace's validation blocks hold a few hundred events, and their noise
    # stopped training after 4 epochs (docs/neural.md, Training).
    "min_steps": 1000,
    "callbacks": {
        "checkpoint": {
            "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
            "filename": "best",
            "mode": "min",
            "save_last": True,
            "save_top_k": 1,
        },
        # strict=False: a run stopped by max_steps mid-epoch may end before any validation.
        "early_stopping": {
            "_target_": "lightning.pytorch.callbacks.EarlyStopping",
            "mode": "min",
            "patience": 3,
            "strict": False,
        },
    },
    "logger": {"_target_": "lightning.pytorch.loggers.CSVLogger", "name": "logs"},
}


def register_configs() -> None:
    """Store the model schemas and the trainer base in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, node in (
        ("naive_base", NaiveModel),
        ("parametric_base", ParametricModel),
        ("neural_base", NeuralModel),
    ):
        store.store(group="model", name=name, node=node)
    store.store(group="trainer", name="lightning_base", node=TRAINER_BASE)
