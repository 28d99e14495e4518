"""Characterize a trace in one streaming pass: ``report.md``, ``stats.json`` and PNG figures."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from servegen_ml.characterize import figures as figs
from servegen_ml.characterize.accumulate import CharacterizeOptions, TraceCharacterizer
from servegen_ml.characterize.report import jsonable, render
from servegen_ml.core.atomic import write_text


def characterize_chunks(
    chunks: Iterable[pd.DataFrame],
    rng: np.random.Generator,
    options: CharacterizeOptions | None = None,
    source: str = "<memory>",
) -> tuple[dict, dict]:
    """(stats, series) of a stream of validated canonical chunks."""
    characterizer = TraceCharacterizer(rng, options, source)
    for chunk in chunks:
        characterizer.add(chunk)
    return characterizer.result()


def write_characterization(
    stats: dict, series: dict, out: str | Path, figures: bool = True
) -> dict[str, str]:
    """Write figures, ``stats.json`` and ``report.md`` into ``out`` (each file atomically); returns the figures."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    made = figs.make_all(stats, series, out) if figures else {}
    stats = {**stats, "figures": made}
    write_text(out / "stats.json", json.dumps(jsonable(stats), indent=2) + "\n")
    write_text(out / "report.md", render(stats, made))
    return made
