"""Provisioning (M7): the smallest number of instances that serves a workload within a latency SLO.

The SLO bounds the p99 time to first token and the p99 time between tokens
(over all decode tokens) of :func:`servegen_ml.bench.simulator.simulate`. The
search doubles the instance count until the SLO is met, then bisects, so it
assumes more instances never hurt (true of join-shortest-queue up to ties).

The under-provisioning error of a synthetic workload is
``(needed_real - needed_synthetic) / needed_real``: positive when sizing a
deployment on the synthetic workload would leave the real one short of
instances, negative when it would over-provision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from servegen_ml.bench.serving_model import ServingModel
from servegen_ml.bench.simulator import simulate


@dataclass(frozen=True)
class SLO:
    ttft_p99_s: float
    tbt_p99_s: float

    def __post_init__(self):
        if not (self.ttft_p99_s > 0 and self.tbt_p99_s > 0):
            raise ValueError(f"SLO bounds must be positive seconds, got {self}")


def default_slo(reference: pd.DataFrame, model: ServingModel, ttft_factor: float = 1.5, tbt_p99_s: float = 0.1) -> SLO:
    """p99 TTFT within ``ttft_factor`` x the p99 of the reference's prompts each served alone; fixed p99 TBT.

    Tying the TTFT bound to the reference's own prompt lengths keeps the SLO
    reachable for long-prompt traces (a 100k-token prompt alone takes seconds).
    """
    isolated = model.isolated_ttft_s(reference["input_tokens"].to_numpy())
    p99 = float(np.quantile(isolated, 0.99)) if len(isolated) else 1.0
    return SLO(ttft_p99_s=ttft_factor * p99, tbt_p99_s=tbt_p99_s)


def busy_instances(trace: pd.DataFrame, model: ServingModel) -> float:
    """Instances kept busy by the trace's work at best-case batching: a starting point for the search.

    Prefill costs its per-token and attention terms; each decode token costs
    its share of a step holding as many sequences as the KV cache and
    ``max_running`` allow, plus reading its context. Divided by the trace's span.
    """
    t = trace["timestamp"].to_numpy(np.float64)
    span_s = float(t.max() - t.min()) if len(t) > 1 else 0.0
    if span_s <= 0:
        return 1.0
    prompt = np.maximum(trace["input_tokens"].to_numpy(np.float64), 1)
    output = np.maximum(trace["output_tokens"].to_numpy(np.float64), 1)
    prefill_s = model.linear_per_token_s * prompt + model.prefill_pair_s * prompt * (prompt + 1) / 2
    batch = max(1, min(model.max_running, int(model.kv_capacity_tokens / float(np.mean(prompt + output)))))
    per_token_s = model.fixed_s(batch) / batch
    decode_s = (output - 1) * (per_token_s + model.decode_kv_token_s * (prompt + output / 2))
    return float((prefill_s.sum() + decode_s.sum()) / span_s)


@dataclass
class Provisioning:
    """Result of the search: ``instances`` is None when even ``max_instances`` misses the SLO."""

    instances: int | None
    tried: dict[int, dict[str, float]] = field(default_factory=dict)  # n -> p99 TTFT / TBT (s)
    unreachable: str | None = None  # why no instance count can meet the SLO, when known without simulating

    def to_dict(self) -> dict:
        out = {"instances": self.instances, "tried": {str(k): v for k, v in sorted(self.tried.items())}}
        return {**out, "unreachable": self.unreachable} if self.unreachable else out


def smallest_instance_count(
    trace: pd.DataFrame,
    slo: SLO,
    model: ServingModel | None = None,
    max_instances: int = 1024,
) -> Provisioning:
    """The fewest instances whose simulated p99 TTFT and p99 TBT meet ``slo``."""
    model = model or ServingModel()
    out = Provisioning(instances=None)

    def meets(n: int) -> bool:
        result = simulate(trace, n, model)
        ttft, tbt = result.ttft_quantile(0.99), result.tbt_quantile(0.99)
        out.tried[n] = {"ttft_p99_s": ttft, "tbt_p99_s": tbt}
        return ttft <= slo.ttft_p99_s and tbt <= slo.tbt_p99_s

    if len(trace) == 0:
        out.instances = 0
        return out
    # No request starts sooner than alone on an idle instance, so that p99 bounds every count's p99 TTFT.
    alone_p99_s = float(np.quantile(model.isolated_ttft_s(trace["input_tokens"].to_numpy()), 0.99))
    if alone_p99_s > slo.ttft_p99_s:
        out.unreachable = (
            f"p99 TTFT with every prompt served alone is {alone_p99_s:.3g} s > the SLO's {slo.ttft_p99_s:.3g} s"
        )
        return out
    # Twice the busy estimate: halving from there stops near full utilization, not in deep overload.
    start = int(min(max(1, np.ceil(2 * busy_instances(trace, model))), max_instances))
    if meets(start):
        # Halve until a count fails (0 instances serve nothing, so 0 always fails).
        high, low = start, start // 2
        while low >= 1 and meets(low):
            high, low = low, low // 2
    else:
        low, high = start, min(2 * start, max_instances)
        while not meets(high):
            if high >= max_instances:
                return out
            low, high = high, min(2 * high, max_instances)
    while high - low > 1:
        mid = (low + high) // 2
        if meets(mid):
            high = mid
        else:
            low = mid
    out.instances = high
    return out


def under_provisioning_error(needed_real: int | None, needed_synthetic: int | None) -> float | None:
    """``(needed_real - needed_synthetic) / needed_real``; None when either count is unknown or real is 0."""
    if needed_real is None or needed_synthetic is None or needed_real == 0:
        return None
    return (needed_real - needed_synthetic) / needed_real
