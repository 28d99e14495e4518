"""Thin Hydra entry point: ``python train/train.py data.path=... model=parametric out=DIR [split=0.67]``.

Builds the generator from ``configs/train.yaml`` and calls
:func:`servegen_ml.generators.training.fit_from_config`; ``servegen-ml train`` runs the same code.
"""

from __future__ import annotations

import json

import hydra

from servegen_ml.core.errors import WorkerFinished
from servegen_ml.generators.training import fit_from_config


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg) -> dict:
    try:
        metrics = fit_from_config(cfg)
    except WorkerFinished:
        return {}  # a DDP worker process; rank 0 prints and writes
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
