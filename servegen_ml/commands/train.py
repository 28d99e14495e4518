"""servegen-ml train data.path=PATH model=naive|parametric|neural out=DIR [split=0.0] [model.KEY=VALUE ...]

Fit a generator to a trace and write a checkpoint directory (readable files
and a manifest; ``servegen-ml generate checkpoint=DIR`` samples from it).

``split=F`` with 0 < F < 1 fits on the earliest fraction F of the trace's time
span and reports the held-out per-event NLL (nats, split into time and each
field) of the rest; the figures are printed and written to ``DIR/metrics.json``.
A ServeGen client-pool directory with ``model=parametric`` loads as a
ready-made fit; add ``+data.duration_s=S`` (and ``+data.start_s``,
``+data.seed``) to fit a sampled trace instead.

Progress: a bar names the running step (read, fit, score, save) and, for the
neural model, Lightning's bar follows training; both show only when stderr is
a terminal, and ``quiet=true`` hides them.
"""

from __future__ import annotations

import inspect
import json

from hydra.utils import get_class
from omegaconf import open_dict

from servegen_ml.core.progress import StepBar
from servegen_ml.generators.training import fit_from_config


def run(cfg) -> int:
    quiet = bool(cfg.quiet)
    lightning = "trainer" in inspect.signature(get_class(cfg.model._target_)).parameters
    if quiet and cfg.get("trainer") is not None:
        with open_dict(cfg):
            cfg.trainer.enable_progress_bar = False
    # Lightning draws its own bar during training; two live bars on one terminal garble each other.
    with StepBar("train", quiet=quiet or lightning) as bar:
        metrics = fit_from_config(cfg, bar.step)
    print(f"wrote checkpoint {cfg.out} ({metrics['generator']}, fitted in {metrics['fit_seconds']} s)")
    if "held_out" in metrics:
        print(f"held-out NLL per event (nats), {metrics['held_out_events']} events:")
        print(json.dumps(metrics["held_out"], indent=2))
    return 0
