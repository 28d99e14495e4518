"""Provisioning (M7): the smallest number of instances that serves a workload within a latency SLO.

The SLO is checked on :func:`servegen_ml.bench.simulator.simulate`:

* TTFT: the p99 over requests of the *excess* time to first token -- TTFT
  minus the time the request's prompt takes alone on an idle instance
  (:meth:`ServingModel.isolated_ttft_s`) -- is at most ``ttft_excess_p99_s``
  (default 2 s). The excess is the delay caused by other traffic (queueing and
  sharing steps), which is what burstiness changes; a bound on raw p99 TTFT
  is dominated by the few longest prompts (a 126k-token Mooncake prompt alone
  takes 22 s), so a workload whose length tail is a little longer could never
  meet it. An absolute bound on p99 TTFT (``ttft_p99_s``) can be added.
* TBT: the p99 time between tokens over all decode tokens is at most
  ``tbt_p99_s`` (default 100 ms).

The search starts from twice a work estimate (:func:`busy_instances`), doubles or
halves until it brackets the SLO, then bisects, so it assumes more instances
never hurt (true of join-shortest-queue up to ties). Starting near the answer
skips the costliest simulations: hours of backlog on far too few instances.

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
from servegen_ml.bench.simulator import SimulationResult, simulate
from servegen_ml.core.errors import UserError


@dataclass(frozen=True)
class SLO:
    """Latency bounds in seconds; ``None`` switches a TTFT bound off."""

    ttft_excess_p99_s: float | None = 2.0
    tbt_p99_s: float = 0.1
    ttft_p99_s: float | None = None

    def __post_init__(self):
        bounds = [self.tbt_p99_s, self.ttft_excess_p99_s, self.ttft_p99_s]
        if any(b is not None and not b > 0 for b in bounds):
            raise UserError(f"SLO bounds must be positive seconds, got {self}")

    def measure(self, result: SimulationResult, isolated_ttft_s: np.ndarray) -> dict[str, float]:
        """The p99 latencies this SLO bounds, of one simulation."""
        excess = result.ttft_s - isolated_ttft_s
        return {
            "ttft_excess_p99_s": float(np.quantile(excess, 0.99)) if len(excess) else 0.0,
            "ttft_p99_s": result.ttft_quantile(0.99),
            "tbt_p99_s": result.tbt_quantile(0.99),
        }

    def met(self, measured: dict[str, float]) -> bool:
        bounds = {
            "ttft_excess_p99_s": self.ttft_excess_p99_s,
            "ttft_p99_s": self.ttft_p99_s,
            "tbt_p99_s": self.tbt_p99_s,
        }
        return all(b is None or measured[k] <= b for k, b in bounds.items())

    def describe(self) -> str:
        parts = []
        if self.ttft_excess_p99_s is not None:
            parts.append(f"p99 of (TTFT - TTFT of the prompt alone) <= {self.ttft_excess_p99_s:g} s")
        if self.ttft_p99_s is not None:
            parts.append(f"p99 TTFT <= {self.ttft_p99_s:g} s")
        parts.append(f"p99 time between tokens <= {self.tbt_p99_s:g} s")
        return "; ".join(parts)


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
    tried: dict[int, dict[str, float]] = field(default_factory=dict)  # n -> the p99s the SLO bounds (s)
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
    isolated_s = model.isolated_ttft_s(trace["input_tokens"].to_numpy())

    def meets(n: int) -> bool:
        out.tried[n] = slo.measure(simulate(trace, n, model), isolated_s)
        return slo.met(out.tried[n])

    if len(trace) == 0:
        out.instances = 0
        return out
    # No request starts sooner than alone on an idle instance, so that p99 bounds every count's p99 TTFT.
    alone_p99_s = float(np.quantile(isolated_s, 0.99))
    if slo.ttft_p99_s is not None and alone_p99_s > slo.ttft_p99_s:
        out.unreachable = f"p99 TTFT with every prompt served alone is {alone_p99_s:.3g} s > the SLO's {slo.ttft_p99_s:.3g} s"
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
