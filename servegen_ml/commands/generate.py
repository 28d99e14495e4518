"""servegen-ml generate checkpoint=DIR|NAME duration_s=S out=FILE [start_s=0] [rate=natural] [clients=all]
                    [upsample=conversations] [seed=0] [format=native] [plot=false] [quiet=false]

Sample a synthetic workload from a checkpoint and write it with a
``FILE.meta.json`` sidecar (spec, seed, checkpoint digest, package version,
units). The same arguments and seed give the same bytes. ``checkpoint`` is a
directory, or a shipped checkpoint's name (``multimodal/parametric``) when no
such directory exists here.

rate:    natural | scale:K | a constant req/s (rate=50) | a curve, quoted for the
         override parser: "rate='curve:0=10,1800=50'" (piecewise-linear t_s=req/s)
         | a CSV file with columns t_s,rate
clients: all | [id1,id2] | new:N (N new clients drawn from the learned population)
start_s: position in the learned timeline (s); spans past its end wrap by week/day.
format:  native (.parquet or .jsonl) | mooncake | bailian | vidur | azure
plot:    true also writes FILE.png: arrival rate over time and input/output length CDFs.
quiet:   true hides the progress bar (it is shown only when stderr is a terminal).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from servegen_ml.core.progress import StepBar
from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.base import checkpoint_digest, load_generator, read_manifest, resolve_checkpoint
from servegen_ml.trace.schema import UNITS


def run(cfg) -> int:
    from servegen_ml.export import export_trace

    plot = bool(cfg.plot)
    with StepBar("generate", 4 if plot else 3, bool(cfg.quiet)) as bar:
        bar.step("load checkpoint")
        checkpoint = resolve_checkpoint(str(cfg.checkpoint))
        manifest = read_manifest(checkpoint)
        gen = load_generator(checkpoint)
        clients = cfg.clients
        if OmegaConf.is_list(clients):
            clients = list(OmegaConf.to_container(clients))
        spec = GenerationSpec.from_values(
            duration_s=cfg.duration_s,
            start_s=cfg.start_s,
            rate=cfg.rate,
            clients=clients,
            upsample=cfg.upsample,
            seed=cfg.seed,
        )
        bar.step(f"sample {spec.duration_s:g} s")
        trace = gen.sample(spec, np.random.default_rng(spec.seed))
        meta = {
            "spec": spec.to_dict(),
            "seed": spec.seed,
            "generator": manifest["generator"],
            "checkpoint": str(cfg.checkpoint),
            "checkpoint_digest": checkpoint_digest(checkpoint),
            "units": dict(UNITS),
        }
        bar.step(f"write {len(trace):,} requests")
        export_trace(trace, cfg.out, format=str(cfg.format), meta=meta)
        if plot:
            bar.step("plot")
            figure = _plot(trace, spec, cfg)
    span = f"{trace['timestamp'].iloc[-1]:.1f} s" if len(trace) else "empty"
    print(f"wrote {cfg.out}: {len(trace)} requests, {trace['client_id'].nunique()} clients, last at {span}")
    if plot:
        print(f"wrote {figure}")
    return 0


def _plot(trace, spec: GenerationSpec, cfg) -> Path:
    """``<out>.png`` beside the output (matplotlib is imported only when asked for)."""
    from servegen_ml.characterize.workload_figure import workload_figure

    out = Path(str(cfg.out))
    title = (
        f"{Path(str(cfg.checkpoint)).as_posix()}: {len(trace):,} requests, rate={cfg.rate}, seed={spec.seed}"
    )
    return workload_figure(trace, spec.duration_s, out.with_name(out.name + ".png"), title)
