"""servegen-ml generate checkpoint=DIR|NAME duration_s=S out=FILE [start_s=0] [rate=natural] [clients=all]
                    [upsample=conversations] [seed=0] [format=native] [plot=false] [quiet=false]
                    [workers=CORES] [block_s=UNIT]

Sample a synthetic workload from a checkpoint and write it with a
``FILE.meta.json`` sidecar (spec, seed, checkpoint digest, package version,
units). The same arguments and seed give the same bytes, whatever ``workers``
and ``block_s``. ``checkpoint`` is a directory, or a shipped checkpoint's name
(``multimodal/parametric``) when no such directory exists here.

rate:    natural | scale:K | a constant req/s (rate=50) | a curve, quoted for the
         override parser: "rate='curve:0=10,1800=50'" (piecewise-linear t_s=req/s)
         | a CSV file with columns t_s,rate
clients: all | [id1,id2] | new:N (N new clients drawn from the learned population)
start_s: position in the learned timeline (s); spans past its end wrap by week/day.
format:  native (.parquet or .jsonl) | mooncake | bailian | aiperf_bailian | vidur | azure
plot:    true also writes FILE.png: arrival rate over time and input/output length CDFs.
workers: processes that sample in parallel (default: the cores available to this process).
block_s: seconds of workload sampled and written at a time (default: one unit, 600 s for
         naive and parametric, 3600 s for neural; a whole multiple of it). Memory grows with
         block_s x rate x workers, never with duration_s.
max_new_clients: clients=new:N above this is refused (each holds its own rate tables in memory).
quiet:   true hides the progress bar (it is shown only when stderr is a terminal).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from servegen_ml.core.errors import UserError
from servegen_ml.core.interrupt import raise_if_interrupted
from servegen_ml.core.outputs import check_free_space, check_output_file
from servegen_ml.core.progress import StepBar
from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.base import checkpoint_digest, load_generator, read_manifest, resolve_checkpoint
from servegen_ml.generators.size import FILE_BYTES_PER_REQUEST, check_size
from servegen_ml.generators.stream import default_workers
from servegen_ml.trace.schema import UNITS


def run(cfg) -> int:
    from servegen_ml.export import FORMATS, WorkloadWriter

    plot = bool(cfg.plot)
    if str(cfg.format) not in FORMATS:
        raise UserError(f"format={cfg.format!r}: choose one of {', '.join(FORMATS)}")
    out = check_output_file(str(cfg.out))
    workers = _workers(cfg)
    with StepBar("generate", 3 if plot else 2, bool(cfg.quiet)) as bar:
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
        # Refuse what cannot be produced before the work, not after it.
        block_s = _block_s(cfg)
        expected = check_size(
            gen, spec, _limit(cfg, "max_new_clients"), block_s or gen.stream_unit_s, workers
        )
        if expected is not None:
            check_free_space(out, expected * FILE_BYTES_PER_REQUEST)
        meta = {
            "spec": spec.to_dict(),
            "seed": spec.seed,
            "generator": manifest["generator"],
            "checkpoint": str(cfg.checkpoint),
            "checkpoint_digest": checkpoint_digest(checkpoint),
            "unit_s": gen.stream_unit_s,
            "units": dict(UNITS),
        }
        summary = None
        if plot:
            from servegen_ml.characterize.workload_figure import WorkloadSummary

            summary = WorkloadSummary(spec.duration_s)
        bar.step("sample and write")
        blocks = gen.generate_blocks(spec, block_s, workers, checkpoint=checkpoint)
        del gen  # with workers, only they hold the model (they load the checkpoint themselves)
        with WorkloadWriter(out, str(cfg.format), meta) as writer:
            for block in blocks:
                raise_if_interrupted()
                writer.write(block.frame, block.continues)
                if summary is not None:
                    summary.add(block.frame)
                bar.note(f"sample and write: {writer.rows:,} requests, {writer.last_s or 0:.0f} s")
        if plot:
            bar.step("plot")
            figure = _plot(summary, spec, cfg)
    span = f"{writer.last_s:.1f} s" if writer.rows else "empty"
    print(f"wrote {cfg.out}: {writer.rows} requests, {len(writer.clients)} clients, last at {span}")
    if plot:
        print(f"wrote {figure}")
    return 0


def _workers(cfg) -> int:
    value = cfg.get("workers")
    if value is None:
        return default_workers()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"workers={value!r}: must be a positive integer (or null: the cores available)")
    return value


def _block_s(cfg) -> float | None:
    value = cfg.get("block_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"block_s={value!r}: must be a positive number of seconds (or null: one unit)")
    return float(value)


def _limit(cfg, key: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{key}={value!r}: must be a positive integer")
    return value


def _plot(summary, spec: GenerationSpec, cfg) -> Path:
    """``<out>.png`` beside the output (matplotlib is imported only when asked for)."""
    from servegen_ml.characterize.workload_figure import workload_figure

    out = Path(str(cfg.out))
    title = (
        f"{Path(str(cfg.checkpoint)).as_posix()}: {summary.requests:,} requests, rate={cfg.rate}, "
        f"seed={spec.seed}"
    )
    return workload_figure(summary, spec.duration_s, out.with_name(out.name + ".png"), title)
