"""The interface every generator implements (docs/architecture.md), and checkpoint directories.

A checkpoint is a directory with ``manifest.json`` (generator kind, package
version, format version, config) and the generator's own readable files (JSON,
Parquet, safetensors) — never pickles.

Likelihood convention (M1), shared by all generators so numbers compare:

* ``log_prob(trace)`` returns one row per event of ``trace`` (sorted order) with
  columns ``time`` and one per mark present (``input_tokens``,
  ``output_tokens``, ``reasoning_tokens``, ``image_count``, ``image_tokens``,
  ... , ``conversation``), plus ``total``; values in nats.
* ``time`` is the log-probability of the event's client-labelled arrival: the
  gap since the previous event of the same client stream, discretized at
  :data:`~servegen_ml.core.spec.TIME_RESOLUTION_S` (``log P(gap in [g, g + resolution))``), so ties and
  zero gaps have finite, comparable likelihood. The survival term from each
  client's last event to the end of the evaluation window is added to that
  last event's ``time``. A generator without clients (naive) adds
  ``log share(client)`` so that all generators score the same labelled events.
* Marks are integer counts and are scored as log-PMFs (tokens per item summed
  over items); ``reasoning_tokens`` is scored given ``output_tokens``.
* ``conversation`` (generators fitted with conversations): the streams are
  conversation openers; a follow-up turn's arrival and prompt are scored here
  (the conversation went on, its inter-turn gap, its new tokens) with ``time``
  and ``input_tokens`` 0, and each conversation's last turn adds the
  probability that it stopped or continued past the window
  (:mod:`servegen_ml.conversations.likelihood`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from servegen_ml.core.atomic import atomic_dir, current_umask
from servegen_ml.core.checkpoint_checks import meta_field, read_json_object
from servegen_ml.core.errors import CheckpointError
from servegen_ml.core.outputs import check_checkpoint_dir
from servegen_ml.core.resources import resource_dir
from servegen_ml.core.spec import GenerationSpec
from servegen_ml.core.version import __version__
from servegen_ml.generators.stream import (
    Block,
    CheckpointRef,
    UnitSource,
    check_block_s,
    generate_blocks,
    setup_rng,
)

MANIFEST = "manifest.json"
CHECKPOINT_FORMAT_VERSION = 1

# kind -> "module:Class"; imported lazily so only the neural generator pulls in torch.
REGISTRY = {
    "naive": "servegen_ml.generators.naive:NaiveGenerator",
    "parametric": "servegen_ml.generators.parametric:ParametricGenerator",
    "neural": "servegen_ml.generators.neural:NeuralGenerator",
}


class NotFittedError(RuntimeError):
    """Raised when a generator is sampled or scored before ``fit``/``load``."""


class Generator(ABC):
    """Base class: constructors store hyperparameters; ``fit`` sets learned state."""

    kind: ClassVar[str]
    # Seconds of the openers' timeline drawn with one seed when streaming (generators.stream).
    stream_unit_s: ClassVar[float] = 3600.0

    @abstractmethod
    def fit(self, trace: pd.DataFrame) -> Generator:
        """Learn from a validated canonical trace; returns ``self``."""

    @abstractmethod
    def unit_source(self, spec: GenerationSpec, rng: np.random.Generator) -> UnitSource:
        """How ``spec`` is sampled piece by piece (``rng`` only for draws made once per spec)."""

    def sample(self, spec: GenerationSpec, rng: np.random.Generator) -> pd.DataFrame:
        """A canonical trace for ``spec`` in one piece: sorted, timestamps in ``[0, spec.duration_s)``.

        Small uses only: it holds the whole workload; :meth:`generate_blocks` streams.
        """
        self._require_fitted()
        source = self.unit_source(spec, rng)
        blocks = generate_blocks(source, spec.seed, None, unit_generator=lambda _: rng)
        return next(iter(blocks)).frame

    def generate_blocks(
        self,
        spec: GenerationSpec,
        block_s: float | None = None,
        workers: int = 1,
        unit_s: float | None = None,
        checkpoint: str | Path | None = None,
    ) -> Iterator[Block]:
        """The workload of ``spec`` in time order, ``block_s`` seconds at a time (default: one unit).

        The rows depend on ``spec`` (its seed included) and ``unit_s`` (default
        :attr:`stream_unit_s`), never on ``block_s`` or ``workers``. ``checkpoint``:
        the directory this generator was loaded from and not changed since; workers
        then load it themselves instead of receiving a pickled copy (which this
        process would hold on top of the generator: 0.8 GB for a pool fitted on 10^8 rows).
        """
        self._require_fitted()
        unit_s = float(unit_s or self.stream_unit_s)
        per_block = check_block_s(float(block_s or unit_s), unit_s)
        source = self.unit_source(spec, setup_rng(spec.seed))
        origin = (
            self if checkpoint is None else CheckpointRef(Path(checkpoint), checkpoint_digest(checkpoint))
        )
        return generate_blocks(source, spec.seed, unit_s, per_block, workers, rebuild=(origin, spec))

    @abstractmethod
    def log_prob(self, trace: pd.DataFrame, window_end_s: float | None = None) -> pd.DataFrame:
        """Per-event log-likelihood in nats (see module docstring for the convention)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Hyperparameters (JSON-serializable) that rebuild an unfitted twin."""

    @abstractmethod
    def _save_state(self, directory: Path) -> None:
        """Write the learned state into ``directory`` (readable formats only)."""

    @abstractmethod
    def _load_state(self, directory: Path) -> None:
        """Read the learned state written by :meth:`_save_state`."""

    @property
    @abstractmethod
    def is_fitted(self) -> bool: ...

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(trace) or load a checkpoint")

    def save(self, directory: str | Path, extra_files: dict[str, str] | None = None) -> Path:
        """Write a self-describing checkpoint directory atomically (with ``extra_files``: name -> text).

        An existing checkpoint is replaced; a directory holding anything else is refused, never deleted.
        """
        self._require_fitted()
        directory = Path(directory)
        check_checkpoint_dir(directory, overwrite=True, key="directory")
        with atomic_dir(directory) as tmp:
            self._save_state(tmp)
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            # Some writers (safetensors) create files 0600; give every file a plain open()'s mode.
            for file in tmp.rglob("*"):
                if file.is_file():
                    os.chmod(file, 0o666 & ~current_umask())
            manifest = {
                "generator": self.kind,
                "package": "servegen-ml",
                "package_version": __version__,
                "format_version": CHECKPOINT_FORMAT_VERSION,
                "config": self.config(),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Generator:
        """Load a checkpoint written by :meth:`save` (of this class or, from the base, of any kind)."""
        manifest = read_manifest(directory)
        target = generator_class(manifest["generator"])
        if cls is not Generator and not issubclass(target, cls):
            raise CheckpointError(
                f"{directory}: holds a {manifest['generator']!r} generator, not {cls.kind!r}"
            )
        path = Path(directory) / MANIFEST
        try:
            gen = target(**manifest.get("config", {}))
        except (TypeError, ValueError) as e:
            raise CheckpointError(
                f"{path}: field 'config' does not fit a {manifest['generator']} generator ({e})"
            ) from None
        try:
            gen._load_state(Path(directory))
        except CheckpointError:
            raise
        except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError, AttributeError, OSError) as e:
            # The loaders check what they read; this names the checkpoint for damage they do not foresee.
            raise CheckpointError(
                f"{directory}: damaged {manifest['generator']} checkpoint ({type(e).__name__}: {e})"
            ) from None
        return gen


def generator_class(kind: str) -> type[Generator]:
    if kind not in REGISTRY:
        raise CheckpointError(f"unknown generator kind {kind!r}; known: {sorted(REGISTRY)}")
    module, name = REGISTRY[kind].split(":")
    return getattr(importlib.import_module(module), name)


def read_manifest(directory: str | Path) -> dict:
    """The checked manifest of a checkpoint directory (kind, format version, config)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint directory (no {MANIFEST})")
    manifest = read_json_object(path, "manifest")
    kind = meta_field(manifest, "generator", path, str)
    if kind not in REGISTRY:
        raise CheckpointError(f"{path}: field 'generator' is {kind!r}; known kinds: {sorted(REGISTRY)}")
    version = manifest.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: field 'format_version' must be an integer, got {version!r:.40}")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is newer than this servegen-ml supports")
    if not isinstance(manifest.get("config", {}), dict):
        raise CheckpointError(f"{path}: field 'config' must be an object")
    return manifest


def load_generator(directory: str | Path) -> Generator:
    """Load any generator checkpoint by its manifest (a path, or a shipped checkpoint's name)."""
    return Generator.load(resolve_checkpoint(directory))


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A checkpoint directory: the local path if it exists, else the shipped checkpoint of that name.

    Shipped names are ``<family>/<kind>`` (``multimodal/parametric``), with or
    without the repository's ``checkpoints/`` prefix, so the README's commands
    also run from an installed package in any directory.
    """
    path = Path(checkpoint)
    if path.exists() or path.is_absolute():
        return path
    name = path.as_posix().removeprefix("checkpoints/")
    shipped = resource_dir("checkpoints") / name
    return shipped if (shipped / MANIFEST).is_file() else path


def checkpoint_digest(directory: str | Path) -> str:
    """sha256 over the checkpoint's files (names and bytes, sorted by name)."""
    h = hashlib.sha256()
    root = Path(directory)
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


def summarize_log_prob(lp: pd.DataFrame) -> dict[str, float]:
    """Mean NLL per event (nats) of each part and the total, from a :meth:`Generator.log_prob` frame."""
    n = max(len(lp), 1)
    out = {f"nll_{c}": float(-lp[c].sum() / n) for c in lp.columns}
    out["events"] = int(len(lp))
    return {k: (v if isinstance(v, int) or math.isfinite(v) else float("inf")) for k, v in out.items()}
