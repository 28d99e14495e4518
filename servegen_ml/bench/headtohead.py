"""Head-to-head runs: fit each generator on the earlier part of a trace, sample the later part, compare.

For a trace spanning ``[t0, t1]`` and ``split = f``, the cut is
``t0 + f (t1 - t0)`` (:func:`servegen_ml.generators.training.time_split`). Each model
(a ``configs/model/<name>.yaml``, plus ``model_args[name]`` overrides) is
fitted on the requests before the cut; for every seed it samples
``t1 - cut`` seconds starting at ``cut - t0`` in its learned timeline (the
same time of day as the held-out part), with ``numpy.random.default_rng(seed)``.
The held-out part is the real test trace and the training part is the
noise-floor reference. M1 is each fitted model's held-out NLL per event,
scored as the ``train`` command scores it. With ``refit_per_seed`` a model is
refitted for every seed (a constructor ``seed`` argument, when it has one,
gets the seed), so the spread includes fitting randomness; otherwise one fit
serves all seeds and the spread is sampling noise only.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from servegen_ml.bench import metrics
from servegen_ml.bench.compare import Comparison, ProvisioningSettings, Workload, compare
from servegen_ml.bench.progress import progress
from servegen_ml.bench.report import fmt, table
from servegen_ml.core.config import compose, config_dir
from servegen_ml.core.errors import UserError
from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.base import Generator
from servegen_ml.generators.training import build_generator, time_split


@dataclass
class HeadToHeadSettings:
    models: list[str]
    split: float = 0.5
    seeds: list[int] = field(default_factory=lambda: [0])
    refit_per_seed: bool = False
    model_args: dict = field(default_factory=dict)  # model name -> constructor overrides
    trainer: dict | None = None


@dataclass
class HeadToHead:
    comparison: Comparison
    summary: dict  # JSON-ready per-model results
    sections: list[str]  # Markdown sections for the report
    plotted: list[str]  # one workload per model (the first seed) for the figures


def model_config(name: str, overrides: dict | None, trainer: dict | None):
    """The ``train``-style config of ``configs/model/<name>.yaml`` with ``overrides`` merged in."""
    path = config_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
        raise UserError(f"models: unknown model {name!r}; known: {', '.join(known)}")
    # Composed, so the file's schema (servegen_ml/core/configs.py) checks the overrides' keys and types.
    model = OmegaConf.merge(compose("train", [f"model={name}"]).model, OmegaConf.create(overrides or {}))
    return OmegaConf.create({"model": model, "trainer": trainer})


def _build(name: str, settings: HeadToHeadSettings, seed: int | None) -> Generator:
    cfg = model_config(name, settings.model_args.get(name), settings.trainer)
    if seed is not None and "seed" in cfg.model:
        cfg.model.seed = seed
    return build_generator(cfg)


def run_head_to_head(
    trace: pd.DataFrame,
    settings: HeadToHeadSettings,
    provisioning: ProvisioningSettings,
    source: str,
    quiet: bool = False,
) -> HeadToHead:
    for name in settings.models:  # unknown names fail before any fitting
        model_config(name, settings.model_args.get(name), settings.trainer)
    train, test = time_split(trace, settings.split)
    t = trace["timestamp"].to_numpy(np.float64)
    cut_s = float(t.min() + settings.split * (t.max() - t.min()))
    start_s = cut_s - float(train["timestamp"].min())
    # The last held-out request must fall inside the sampled span.
    duration_s = float(np.nextafter(t.max() - cut_s, np.inf))
    workloads, per_model = [], {}
    jobs = [(m, s) for m in settings.models for s in settings.seeds]
    fitted: dict[str, Generator] = {}
    for name, seed in progress(jobs, "fit and sample", quiet):
        entry = per_model.setdefault(name, {"fit_seconds": [], "sample_seconds": [], "seeds": []})
        if "error" in entry:
            continue
        try:
            workloads.append(
                _fit_and_sample(name, seed, settings, train, test, start_s, duration_s, fitted, entry)
            )
        except Exception as e:
            entry["error"] = f"{type(e).__name__}: {e}"
            warnings.warn(
                f"head-to-head: model {name!r} failed at seed {seed}: {entry['error']}", stacklevel=2
            )
    if not workloads:
        raise UserError(
            "head-to-head: every model failed: "
            + "; ".join(f"{n}: {e['error']}" for n, e in per_model.items())
        )
    comp = compare(
        Workload("real_test", test, {"path": source, "part": f"after {settings.split:g} of the span"}),
        Workload("reference", train, {"path": source, "part": f"before {settings.split:g} of the span"}),
        workloads,
        provisioning,
        quiet,
    )
    summary = _summarize(comp, per_model, settings, cut_s, start_s, duration_s)
    summary["new_clients"] = _new_clients(fitted, settings, train, test, start_s, duration_s, quiet)
    plotted = [w.name for w in workloads if w.info["seed"] == settings.seeds[0]]
    sections = [_m1_section(summary), _seed_section(summary, comp), _new_clients_section(summary)]
    return HeadToHead(comp, summary, sections, plotted)


def _new_clients(fitted, settings, train, test, start_s, duration_s, quiet) -> dict:
    """Each model's ``clients=new:N`` (N = the test trace's clients) against the real test clients.

    Per-client distributions with every client counting once
    (:func:`metrics.client_population`); the floor is the reference's clients
    against the test's. A model without clients (naive) is reported as such.
    """
    n = int(test["client_id"].nunique())
    floor = metrics.client_population(train, test)
    out = {"n": n, "noise_floor": metrics.jsonable(floor), "models": {}}
    if n < 2:
        out["absent"] = "fewer than 2 clients in the test trace"
        return out
    jobs = [(m, s) for m in settings.models if m in fitted for s in settings.seeds]
    for name, seed in progress(jobs, "new clients", quiet):
        entry = out["models"].setdefault(name, {"seeds": []})
        if "error" in entry:
            continue
        spec = GenerationSpec.from_values(duration_s, start_s, clients=f"new:{n}", seed=seed)
        try:
            new = fitted[name].sample(spec, np.random.default_rng(seed))
        except ValueError as e:  # e.g. the naive model has no clients
            entry["error"] = str(e)
            continue
        res = metrics.client_population(new, test)
        entry["seeds"].append(
            {
                "seed": seed,
                **metrics.jsonable(res),
                "ratio_to_noise_floor": metrics.noise_floor_ratio(res["distance"], floor["distance"]),
            }
        )
    return out


def _new_clients_section(summary: dict) -> str:
    new = summary["new_clients"]
    title = f"## New clients: clients=new:{new['n']} against the test trace's {new['n']} real clients"
    if "absent" in new:
        return f"{title}\n\n{new['absent']}."
    floor = new["noise_floor"]
    real = floor.get("stats", {})
    rows = [
        [
            "reference (noise floor)",
            fmt(real.get("total_rate_rps", {}).get("synthetic")),
            fmt(real.get("median_client_rate_rps", {}).get("synthetic")),
            fmt(floor.get("distance")),
            "1",
        ]
    ]
    for name, entry in new["models"].items():
        if "error" in entry:
            rows.append([name, "—", "—", "—", f"not supported: {entry['error']}"])
            continue
        for r in entry["seeds"]:
            stats = r.get("stats", {})
            rows.append(
                [
                    f"{name} (seed {r['seed']})",
                    fmt(stats.get("total_rate_rps", {}).get("synthetic")),
                    fmt(stats.get("median_client_rate_rps", {}).get("synthetic")),
                    fmt(r.get("distance")),
                    fmt(r.get("ratio_to_noise_floor")),
                ]
            )
    test_total = fmt(real.get("total_rate_rps", {}).get("real"))
    test_median = fmt(real.get("median_client_rate_rps", {}).get("real"))
    return "\n\n".join(
        [
            title,
            (
                f"Real test clients: {test_total} req/s in all, median client {test_median} req/s. "
                "Distance: mean Wasserstein of the per-client distributions of log10 rate, log CV and "
                "log10 median input/output tokens, every client counting once (client_population)."
            ),
            table(["workload", "total req/s", "median client req/s", "distance", "ratio to floor"], rows),
        ]
    )


def _fit_and_sample(name, seed, settings, train, test, start_s, duration_s, fitted, entry) -> Workload:
    if settings.refit_per_seed or name not in fitted:
        gen = _build(name, settings, seed if settings.refit_per_seed else None)
        started = time.perf_counter()
        fitted[name] = gen.fit(train)
        entry["fit_seconds"].append(round(time.perf_counter() - started, 3))
        entry.setdefault("m1", []).append(metrics.jsonable(metrics.m1_for_generator(fitted[name], test)))
    spec = GenerationSpec(duration_s=duration_s, start_s=start_s, seed=seed)
    started = time.perf_counter()
    synthetic = fitted[name].sample(spec, np.random.default_rng(seed))
    entry["sample_seconds"].append(round(time.perf_counter() - started, 3))
    entry["seeds"].append(seed)
    return Workload(f"{name}/seed{seed}", synthetic, {"model": name, "seed": seed, "spec": spec.to_dict()})


def _summarize(comp: Comparison, per_model: dict, settings, cut_s, start_s, duration_s) -> dict:
    for name, entry in per_model.items():
        names = [f"{name}/seed{s}" for s in entry["seeds"]]
        ratio = {m: [comp.ratios[n][m]["distance"] for n in names] for m in comp.floor}
        entry["ratio_mean"] = {m: _mean(v) for m, v in ratio.items()}
        entry["ratio_sd"] = {m: _sd(v) for m, v in ratio.items()}
        if comp.provisioning is not None:
            synthetic = comp.provisioning["synthetic"]
            entry["instances"] = [synthetic[n]["instances"] for n in names]
            entry["under_provisioning_error"] = [synthetic[n]["under_provisioning_error"] for n in names]
    return {
        "split": settings.split,
        "cut_s": cut_s,
        "sample_start_s": start_s,
        "sample_duration_s": duration_s,
        "seeds": list(settings.seeds),
        "refit_per_seed": settings.refit_per_seed,
        "models": per_model,
    }


def _values(xs) -> list[float]:
    return [float(x) for x in xs if x is not None]


def _mean(xs) -> float | None:
    v = _values(xs)
    return float(np.mean(v)) if v else None


def _sd(xs) -> float | None:
    v = _values(xs)
    return float(np.std(v, ddof=1)) if len(v) > 1 else None


def _pm(mean, sd) -> str:
    return fmt(mean) if sd is None else f"{fmt(mean)} ± {fmt(sd, 2)}"


def _m1_section(summary: dict) -> str:
    models = summary["models"]
    fits = [(name, i, m1) for name, e in models.items() for i, m1 in enumerate(e.get("m1", []))]
    if not fits:
        return "## Held-out NLL (M1)\n\nNo model was fitted."
    scored = [set(m1["components"]) - {"total"} for _, _, m1 in fits]
    parts = sorted(set().union(*scored))
    # Totals over different parts do not compare; the sum over the parts every model scores does.
    common = sorted(set.intersection(*scored))
    rows = []
    for name, i, m1 in fits:
        label = name if len(models[name]["m1"]) == 1 else f"{name} (fit {i + 1})"
        c = m1["components"]
        common_total = sum(c[p] for p in common) if all(c.get(p) is not None for p in common) else None
        rows.append(
            [label] + [fmt(c.get(p), 4) for p in parts] + [fmt(c.get("total"), 4), fmt(common_total, 4)]
        )
        rows[-1].append(str(m1["stats"]["events"]))
    header = ["model", *parts, "total", f"total over {', '.join(common)}", "events"]
    return "\n\n".join(["## Held-out NLL (M1), nats per event (lower is better)", table(header, rows)])


def _seed_section(summary: dict, comp: Comparison) -> str:
    models = summary["models"]
    names = list(models)
    rows = [
        [m] + [_pm(models[n]["ratio_mean"][m], models[n]["ratio_sd"][m]) for n in names] for m in comp.floor
    ]
    if comp.provisioning is not None:
        rows.append(
            ["M7 instances (real test: " + fmt(comp.provisioning["real_test"]["instances"]) + ")"]
            + [", ".join(fmt(x) for x in models[n]["instances"]) or "—" for n in names]
        )
        rows.append(
            ["M7 under-provisioning error"]
            + [
                _pm(_mean(models[n]["under_provisioning_error"]), _sd(models[n]["under_provisioning_error"]))
                for n in names
            ]
        )
    seeds = ", ".join(str(s) for s in summary["seeds"])
    failures = [f"- **{n} failed**: {e['error']}" for n, e in models.items() if "error" in e]
    return "\n\n".join(
        [
            f"## Head-to-head summary over seeds [{seeds}] (ratio to the noise floor, mean ± sd)",
            (
                f"Split at {summary['split']:g} of the span; every model samples {summary['sample_duration_s']:.0f} s "
                f"from position {summary['sample_start_s']:.0f} s of its learned timeline."
            ),
            table(["metric", *names], rows),
            *(["\n".join(failures)] if failures else []),
        ]
    )
