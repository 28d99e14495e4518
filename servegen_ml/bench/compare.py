"""Fidelity of synthetic workloads against a real test trace, next to the noise floor (docs/benchmark.md).

Every metric of :mod:`servegen_ml.bench.metrics` is computed for each
synthetic workload against the real test trace, and once for a real reference
trace against the same test trace (the noise floor); their ratio says how many
times farther from the test traffic a workload is than real traffic itself
(1.0 = as close). Provisioning (M7) sizes a deployment for each workload with
the simulator and reports the under-provisioning error against the test
trace's own instance count; the reference gets one too, as its floor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from servegen_ml.bench import metrics
from servegen_ml.bench.progress import progress
from servegen_ml.bench.provisioning import SLO, smallest_instance_count, under_provisioning_error
from servegen_ml.bench.serving_model import ServingModel
from servegen_ml.core.errors import UserError


@dataclass
class Workload:
    """A named trace and what it is (file path, or model and seed)."""

    name: str
    trace: pd.DataFrame
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ProvisioningSettings:
    """M7 settings: the SLO (see :mod:`servegen_ml.bench.provisioning`), search limit and instance speed."""

    enabled: bool = True
    ttft_excess_p99_s: float | None = 2.0
    tbt_p99_s: float = 0.1
    ttft_p99_s: float | None = None
    max_instances: int = 1024
    speedup: float = 1.0  # instance speed relative to the reference configuration of ServingModel


@dataclass
class Comparison:
    test: Workload
    reference: Workload
    floor: dict  # metric results of the reference against the test trace (with plot arrays)
    workloads: list[Workload]
    results: dict[str, dict]  # workload name -> metric results (with plot arrays)
    ratios: dict[str, dict]
    provisioning: dict | None

    def to_json(self) -> dict:
        return {
            "real_test": describe(self.test),
            "reference": describe(self.reference),
            "noise_floor": metrics.jsonable(self.floor),
            "synthetic": {
                w.name: {
                    **describe(w),
                    "metrics": metrics.jsonable(self.results[w.name]),
                    "ratio_to_noise_floor": metrics.jsonable(self.ratios[w.name]),
                }
                for w in self.workloads
            },
            "provisioning": self.provisioning,
        }


def describe(w: Workload) -> dict:
    t = w.trace["timestamp"].to_numpy(dtype=np.float64)
    span = float(t.max() - t.min()) if len(t) else 0.0
    return {
        **w.info,
        "requests": len(w.trace),
        "span_s": span,
        "clients": int(w.trace["client_id"].nunique()) if len(w.trace) else 0,
        "mean_rate_rps": float(len(t) / span) if span > 0 else None,
    }


def compare(
    test: Workload,
    reference: Workload,
    workloads: list[Workload],
    settings: ProvisioningSettings | None = None,
    quiet: bool = False,
) -> Comparison:
    """All metrics, noise-floor ratios and (if enabled) provisioning counts of ``workloads`` vs ``test``."""
    settings = settings or ProvisioningSettings()
    names = [test.name, reference.name, *(w.name for w in workloads)]
    if len(set(names)) != len(names):
        raise UserError(f"workload names must be unique, got {names}")
    floor = metrics.noise_floor(reference.trace, test.trace)
    results, ratios = {}, {}
    for w in progress(workloads, "metrics", quiet):
        results[w.name] = metrics.compute_all(w.trace, test.trace)
        ratios[w.name] = metrics.ratios(results[w.name], floor)
    provisioning = _provisioning(test, reference, workloads, settings, quiet) if settings.enabled else None
    return Comparison(test, reference, floor, workloads, results, ratios, provisioning)


def _provisioning(test, reference, workloads, settings: ProvisioningSettings, quiet: bool) -> dict:
    model = ServingModel().faster(settings.speedup)
    slo = SLO(settings.ttft_excess_p99_s, settings.tbt_p99_s, settings.ttft_p99_s)
    counts = {}
    for w in progress([test, reference, *workloads], "provisioning", quiet):
        counts[w.name] = smallest_instance_count(w.trace, slo, model, settings.max_instances)
    needed_real = counts[test.name].instances
    return {
        "slo": _slo_dict(slo),
        "serving_model": {**model.__dict__, "speedup": settings.speedup},
        "real_test": counts[test.name].to_dict(),
        "reference": {
            **counts[reference.name].to_dict(),
            "under_provisioning_error": under_provisioning_error(
                needed_real, counts[reference.name].instances
            ),
        },
        "synthetic": {
            w.name: {
                **counts[w.name].to_dict(),
                "under_provisioning_error": under_provisioning_error(needed_real, counts[w.name].instances),
            }
            for w in workloads
        },
    }


def _slo_dict(slo: SLO) -> dict:
    return {
        "ttft_excess_p99_s": slo.ttft_excess_p99_s,
        "ttft_p99_s": slo.ttft_p99_s,
        "tbt_p99_s": slo.tbt_p99_s,
        "rule": slo.describe(),
    }
