"""servegen-ml train data.path=PATH model=naive|parametric|neural out=DIR [split=0.0] [model.KEY=VALUE ...]

Fit a generator to a trace and write a checkpoint directory (readable files
and a manifest; ``servegen-ml generate checkpoint=DIR`` samples from it).

``split=F`` with 0 < F < 1 fits on the earliest fraction F of the trace's time
span and reports the held-out per-event NLL (nats, split into time and each
field) of the rest; the figures are printed and written to ``DIR/metrics.json``.
A ServeGen client-pool directory with ``model=parametric`` loads as a
ready-made fit; add ``+data.duration_s=S`` (and ``+data.start_s``,
``+data.seed``) to fit a sampled trace instead.
"""

from __future__ import annotations

import json

from servegen_ml.training import fit_from_config


def run(cfg) -> int:
    metrics = fit_from_config(cfg)
    print(f"wrote checkpoint {cfg.out} ({metrics['generator']}, fitted in {metrics['fit_seconds']} s)")
    if "held_out" in metrics:
        print(f"held-out NLL per event (nats), {metrics['held_out_events']} events:")
        print(json.dumps(metrics["held_out"], indent=2))
    return 0
