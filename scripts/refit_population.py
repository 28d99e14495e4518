"""Refit the client population of saved neural checkpoints in place (no retraining).

    python3 scripts/refit_population.py checkpoints/*/neural

The population (the Gaussian mixture ``clients=new:N`` draws from) is fitted
after training from the client vectors the checkpoint already stores, so a
change in how it is fitted needs no new training run. The settings (components,
seed) are the checkpoint's own, from its manifest; only ``neural.json`` changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from servegen_ml.neural.population import fit_population
from servegen_ml.neural.state import META_FILE, NeuralState


def refit(directory: Path) -> None:
    config = json.loads((directory / "manifest.json").read_text())["config"]
    state = NeuralState.load(directory)
    population = fit_population(
        state.client_vectors(), int(config["population_components"]), int(config["seed"])
    )
    meta_path = directory / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["population"] = population.to_json()
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    tmp.replace(meta_path)  # atomic: a reader sees the old file or the new one
    print(f"{directory}: population refitted over {len(state.client_ids)} clients")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        refit(Path(arg))
