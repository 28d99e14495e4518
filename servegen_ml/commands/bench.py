"""servegen-ml bench: fidelity of synthetic workloads against real traffic, next to the noise floor.

Compare mode:
  servegen-ml bench data.path=REAL_TEST reference=REAL_REF synthetic=[A.parquet,B.parquet] out=DIR
Every metric (M2-M6, M8, client heterogeneity) of each synthetic trace against
the real test trace, the noise floor d(reference, test) and their ratio
(1.0 = as close as real traffic is to itself), plus provisioning (M7): the
smallest number of simulated serving instances (Llama-3-8B on A100-80GB, see
servegen_ml/bench/serving_model.py) meeting the SLO -- p99 of the TTFT beyond
the prompt's own prefill time <= provisioning.ttft_excess_p99_s (2 s), p99
time between tokens <= provisioning.tbt_p99_s (0.1 s), optionally p99 TTFT <=
provisioning.ttft_p99_s -- and the under-provisioning error of each workload.

Head-to-head mode:
  servegen-ml bench data.path=TRACE split=0.5 models=[naive,parametric,neural] seeds=[0,1,2] out=DIR
fits each model on the earliest `split` of the time span, samples the rest
(same time of day) once per seed, uses the earlier part as the noise-floor
reference, and adds each model's held-out NLL (M1) and a mean ± sd over seeds.
The neural model trains with the `trainer` group (trainer=fast for a quick
run, trainer=gpu on a GPU); `+model_args.NAME.KEY=VALUE` overrides a model's
config (configs/model/NAME.yaml).

Writes DIR/metrics.json, DIR/report.md (Markdown tables) and PNG figures
(length CDFs, per-window inter-arrival CV, index of dispersion across window
sizes, per-minute rate over time, token load, per-client rate CDF).
Traces are read with data.format for data.path and format auto for the others.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from servegen_ml.commands.validate import adapter_options
from servegen_ml.core.errors import UserError
from servegen_ml.pool import read_source


def _as_list(value) -> list:
    if value is None:
        return []
    if OmegaConf.is_list(value):
        return list(OmegaConf.to_container(value, resolve=True))
    return [value]


def _settings(cfg):
    from servegen_ml.bench.compare import ProvisioningSettings

    p = cfg.provisioning
    return ProvisioningSettings(
        enabled=bool(p.enabled),
        ttft_excess_p99_s=None if p.ttft_excess_p99_s is None else float(p.ttft_excess_p99_s),
        tbt_p99_s=float(p.tbt_p99_s),
        ttft_p99_s=None if p.ttft_p99_s is None else float(p.ttft_p99_s),
        max_instances=int(p.max_instances),
        speedup=float(p.speedup),
    )


def _trainer(cfg) -> dict | None:
    if not cfg.get("trainer"):
        return None
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    return {**trainer, "enable_progress_bar": False} if cfg.quiet else trainer


def _override_value(v) -> str:
    """A value as a Hydra override writes it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _flat(values: dict, prefix: str) -> dict:
    """Nested config values as ``{dotted.key: value}``."""
    out = {}
    for k, v in values.items():
        out.update(_flat(v, f"{prefix}.{k}") if isinstance(v, dict) else {f"{prefix}.{k}": v})
    return out


def _trainer_overrides(cfg) -> list[str]:
    """``trainer=NAME`` (the trainer file the run used, which names itself), then the keys that differ from it."""
    from servegen_ml.core.config import compose

    mine = OmegaConf.to_container(cfg.trainer, resolve=True)
    name = mine.get("name", "cpu")
    group = OmegaConf.to_container(compose("bench", [f"trainer={name}"]).trainer, resolve=True)
    mine, group = _flat(mine, "trainer"), _flat(group, "trainer")
    diff = [f"{k}={_override_value(v)}" for k, v in mine.items() if group.get(k) != v]
    return ([] if name == "cpu" else [f"trainer={name}"]) + diff


def _command(cfg, models: list, synthetic: list) -> str:
    p = cfg.provisioning
    parts = ["servegen-ml bench", f"data.path={cfg.data.path}"]
    if cfg.data.format != "auto":
        parts.append(f"data.format={cfg.data.format}")
    if models:
        seeds = ",".join(str(s) for s in _as_list(cfg.seeds))
        parts += [f"split={cfg.split}", f"models=[{','.join(models)}]", f"seeds=[{seeds}]"]
        parts += _trainer_overrides(cfg)
        if cfg.refit_per_seed:
            parts.append("refit_per_seed=true")
        for name, args in OmegaConf.to_container(cfg.model_args, resolve=True).items():
            parts += [f"+model_args.{name}.{k}={_override_value(v)}" for k, v in args.items()]
    else:
        parts += [f"reference={cfg.reference}", f"synthetic=[{','.join(synthetic)}]"]
    defaults = {
        "enabled": True,
        "ttft_excess_p99_s": 2.0,
        "tbt_p99_s": 0.1,
        "ttft_p99_s": None,
        "max_instances": 1024,
        "speedup": 1.0,
    }
    parts += [f"provisioning.{k}={_override_value(p[k])}" for k, v in defaults.items() if p[k] != v]
    parts.append(f"out={cfg.out}")
    return " ".join(parts)


def run(cfg) -> int:
    from servegen_ml.bench.compare import Workload, compare
    from servegen_ml.bench.headtohead import HeadToHeadSettings, run_head_to_head
    from servegen_ml.bench.report import write_outputs

    models = [str(m) for m in _as_list(cfg.models)]
    synthetic = [str(s) for s in _as_list(cfg.synthetic)]
    trace = read_source(
        cfg.data.path, cfg.data.format, bool(cfg.data.skip_bad_rows), **adapter_options(cfg.data)
    )
    settings = _settings(cfg)
    command = _command(cfg, models, synthetic)
    config = {"config": OmegaConf.to_container(cfg, resolve=True), "command": command}
    if models:
        h2h = run_head_to_head(
            trace,
            HeadToHeadSettings(
                models=models,
                split=float(cfg.split),
                seeds=[int(s) for s in _as_list(cfg.seeds)],
                refit_per_seed=bool(cfg.refit_per_seed),
                model_args=OmegaConf.to_container(cfg.model_args, resolve=True),
                trainer=_trainer(cfg),
            ),
            settings,
            str(cfg.data.path),
            bool(cfg.quiet),
        )
        comp = h2h.comparison
        written = write_outputs(
            comp,
            cfg.out,
            "Head-to-head fidelity benchmark",
            h2h.plotted,
            {**config, "head_to_head": h2h.summary},
            h2h.sections,
            command,
        )
    else:
        if cfg.reference is None or not synthetic:
            raise UserError(
                "bench needs reference=REAL_REF and synthetic=[A,...] (compare mode) or models=[...] "
                "(head-to-head mode)"
            )
        test = Workload("real_test", trace, {"path": str(cfg.data.path)})
        reference = Workload("reference", read_source(cfg.reference), {"path": str(cfg.reference)})
        workloads = [
            Workload(_name(p, i, synthetic), read_source(p), {"path": p}) for i, p in enumerate(synthetic)
        ]
        comp = compare(test, reference, workloads, settings, bool(cfg.quiet))
        written = write_outputs(
            comp, cfg.out, "Fidelity benchmark", [w.name for w in workloads], config, None, command
        )
    print(f"wrote {', '.join(str(p) for p in written[:2])} and {len(written) - 2} figures")
    _print_headlines(comp)
    return 0


def _name(path: str, index: int, paths: list[str]) -> str:
    """The file's stem, made unique with its position when two files share one."""
    stems = [Path(p).name.split(".")[0] for p in paths]
    stem = stems[index]
    return (
        stem if stems.count(stem) == 1 and stem not in ("real_test", "reference") else f"{stem}#{index + 1}"
    )


def _print_headlines(comp) -> None:
    from servegen_ml.bench.report import fmt

    names = [w.name for w in comp.workloads]
    print("ratio to the noise floor (1.0 = as close as real traffic):")
    print("  " + "metric".ljust(24) + "".join(n[:18].rjust(20) for n in names))
    for m in comp.floor:
        print("  " + m.ljust(24) + "".join(fmt(comp.ratios[n][m]["distance"]).rjust(20) for n in names))
    if comp.provisioning is not None:
        p = comp.provisioning
        line = f"  instances: real test {fmt(p['real_test']['instances'])}, reference {fmt(p['reference']['instances'])}"
        print(line + "".join(f", {n} {fmt(v['instances'])}" for n, v in p["synthetic"].items()))
