"""A small continuous-batching serving simulator (M7): per-request TTFT and time between tokens.

Model (costs: :mod:`servegen_ml.bench.serving_model`):

* ``n`` identical instances; each arriving request goes to the instance with
  the fewest outstanding requests (join-shortest-queue; ties to the lowest
  index), where it waits in a FCFS queue.
* Each instance runs engine steps back to back while it has work. A step
  gives one token to every decoding sequence, then fills the rest of the
  token budget with prefill chunks: first the prompts already being
  prefilled, in admission order, then newly admitted ones (chunked prefill,
  decode first, as in Sarathi-Serve and vLLM). A waiting request is admitted
  when the step has budget left, fewer than ``max_running`` sequences run and
  its whole context (input + output tokens) fits in the KV cache -- or the
  instance is empty (no preemption).
* A request's first token is produced at the end of the step that finishes
  its prompt, and each later token at the end of each following step; it
  completes after ``output_tokens`` tokens (inputs and outputs of 0 count
  as 1). Every decode token therefore arrives one step duration after the
  previous one, so the time-between-tokens distribution is the step
  durations weighted by the number of decoding sequences in each step.

Speed: runs of steps whose batch cannot change (no completion, no admission
possible or needed) are advanced in closed form, since their durations grow
linearly with the KV context. One hour of the Mooncake trace (12k requests,
1.4e8 prompt tokens) simulates in seconds.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd

from servegen_ml.bench.serving_model import ServingModel
from servegen_ml.core.errors import UserError


@dataclass
class SimulationResult:
    """Per-request latencies (s, request order of the input trace) and the token-level TBT distribution."""

    ttft_s: np.ndarray
    finish_s: np.ndarray
    tpot_s: np.ndarray  # mean time per output token after the first; NaN for one-token outputs
    instance: np.ndarray
    step_s: np.ndarray  # duration of each step that had decoding sequences
    step_decoders: np.ndarray  # decoding sequences in that step (the weight of its duration)

    def ttft_quantile(self, q: float) -> float:
        return float(np.quantile(self.ttft_s, q)) if len(self.ttft_s) else 0.0

    def tbt_quantile(self, q: float) -> float:
        """Quantile of the time between consecutive tokens over all decode tokens."""
        if not len(self.step_s):
            return 0.0
        order = np.argsort(self.step_s, kind="stable")
        cum = np.cumsum(self.step_decoders[order], dtype=np.float64)
        k = int(np.searchsorted(cum, q * cum[-1], side="left"))
        return float(self.step_s[order][min(k, len(order) - 1)])


class _Prefill:
    __slots__ = ("done", "remaining", "request")

    def __init__(self, request: int, tokens: int):
        self.request, self.remaining, self.done = request, tokens, 0


class _Instance:
    """One engine: FCFS waiting queue, prefilling prompts, and decoding sequences in a heap by finish step."""

    def __init__(self, model: ServingModel, sim: _Simulation):
        self.m, self.sim = model, sim
        self.clock_s = 0.0
        self.steps = 0
        self.waiting: deque[int] = deque()
        self.prefilling: deque[_Prefill] = deque()
        self.decoding: list[tuple[int, int]] = []  # (finishing step, request)
        self.decoders = 0
        self.context_tokens = 0  # KV context of decoding sequences
        self.reserved_tokens = 0
        self.running = 0
        self.outstanding = 0
        # Requests completed at the end of the last step, which may end after the routing time.
        self.last_end_s = 0.0
        self.completed_at_last_end = 0

    def outstanding_at(self, t_s: float) -> int:
        return self.outstanding + (self.completed_at_last_end if self.last_end_s > t_s else 0)

    def earliest_completion_s(self) -> float:
        """A lower bound on the end of the next step that completes a request (inf when idle)."""
        steps = math.inf
        if self.decoding:
            steps = self.decoding[0][0] - self.steps
        if self.prefilling:
            steps = min(steps, math.ceil(self.prefilling[0].remaining / self.m.token_budget))
        elif self.waiting:
            steps = min(steps, math.ceil(self.sim.prompt_tokens[self.waiting[0]] / self.m.token_budget))
        return self.clock_s + steps * self.m.min_step_s if steps != math.inf else math.inf

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoders)

    def advance(self, until_s: float) -> None:
        """Run every step that starts before ``until_s``; an idle instance waits until then."""
        while self.has_work() and self.clock_s < until_s:
            if not self._run_quiet_steps(until_s):
                self._step()
        if not self.has_work():
            self.clock_s = max(self.clock_s, until_s)

    # -- admission -------------------------------------------------------------------------
    def _can_admit(self, request: int) -> bool:
        if self.running == 0:
            return True
        need = self.sim.context_tokens[request]
        return self.running < self.m.max_running and self.reserved_tokens + need <= self.m.kv_capacity_tokens

    def _admit(self) -> _Prefill:
        request = self.waiting.popleft()
        self.running += 1
        self.reserved_tokens += self.sim.context_tokens[request]
        entry = _Prefill(request, self.sim.prompt_tokens[request])
        self.prefilling.append(entry)
        return entry

    # -- one step --------------------------------------------------------------------------
    def _step(self) -> None:
        budget = self.m.token_budget - self.decoders
        chunks: list[tuple[_Prefill, int]] = []
        for entry in self.prefilling:
            if budget == 0:
                break
            c = min(entry.remaining, budget)
            chunks.append((entry, c))
            budget -= c
        while budget > 0 and self.waiting and self._can_admit(self.waiting[0]):
            entry = self._admit()
            c = min(entry.remaining, budget)
            chunks.append((entry, c))
            budget -= c
        prefill_tokens = sum(c for _, c in chunks)
        pairs = sum(c * (e.done + (c + 1) / 2) for e, c in chunks)
        duration = (
            self.m.fixed_s(self.decoders + prefill_tokens)
            + self.m.prefill_pair_s * pairs
            + self.m.decode_kv_token_s * self.context_tokens
        )
        self._record(duration, 0.0, 1)
        end = self.clock_s + duration
        self.clock_s = end
        self.steps += 1
        self.context_tokens += self.decoders
        completed = self._finish_decodes(end)
        for entry, c in chunks:
            entry.remaining -= c
            entry.done += c
            if entry.remaining == 0:
                completed += self._first_token(entry, end)
        self.last_end_s, self.completed_at_last_end = end, completed

    def _finish_decodes(self, end_s: float) -> int:
        completed = 0
        while self.decoding and self.decoding[0][0] == self.steps:
            _, request = heapq.heappop(self.decoding)
            self.decoders -= 1
            self.context_tokens -= self.sim.context_tokens[request]
            self._complete(request, end_s)
            completed += 1
        return completed

    def _first_token(self, entry: _Prefill, end_s: float) -> int:
        self.prefilling.remove(entry)
        request = entry.request
        self.sim.first_token_s[request] = end_s
        output = self.sim.output_tokens[request]
        if output == 1:
            self._complete(request, end_s)
            return 1
        self.decoders += 1
        self.context_tokens += self.sim.prompt_tokens[request] + 1
        heapq.heappush(self.decoding, (self.steps + output - 1, request))
        return 0

    def _complete(self, request: int, end_s: float) -> None:
        self.sim.finish_s[request] = end_s
        self.running -= 1
        self.outstanding -= 1
        self.reserved_tokens -= self.sim.context_tokens[request]

    # -- runs of identical steps -----------------------------------------------------------
    def _run_quiet_steps(self, until_s: float) -> bool:
        """Advance a run of steps whose batch is fixed, in closed form; False if none applies now."""
        budget = self.m.token_budget - self.decoders
        head = self.prefilling[0] if self.prefilling else None
        if head is not None:
            # Only the head's prompt is in these steps and it does not finish in them.
            if head.remaining <= budget:
                return False
            n = math.ceil(head.remaining / budget) - 1
            chunk = budget
        else:
            if self.decoders == 0 or (self.waiting and self._can_admit(self.waiting[0])):
                return False
            n, chunk = math.inf, 0
        if self.decoding:
            n = min(n, self.decoding[0][0] - self.steps - 1)  # stop before the next completion
        prefix = head.done if head is not None else 0
        first_s = (
            self.m.fixed_s(self.decoders + chunk)
            + self.m.decode_kv_token_s * self.context_tokens
            + self.m.prefill_pair_s * chunk * (prefix + (chunk + 1) / 2)
        )
        growth_s = self.m.decode_kv_token_s * self.decoders + self.m.prefill_pair_s * chunk * chunk
        n = min(n, _steps_starting_before(until_s - self.clock_s, first_s, growth_s))
        if n < 1:
            return False
        n = int(n)
        self._record(first_s, growth_s, n)
        self.clock_s += n * first_s + growth_s * n * (n - 1) / 2
        self.steps += n
        self.context_tokens += self.decoders * n
        if head is not None:
            head.remaining -= chunk * n
            head.done += chunk * n
        self.last_end_s, self.completed_at_last_end = self.clock_s, 0
        return True

    def _record(self, first_s: float, growth_s: float, n: int) -> None:
        if self.decoders:
            self.sim.runs.append((first_s, growth_s, n, self.decoders))


def _steps_starting_before(window_s: float, first_s: float, growth_s: float) -> float:
    """How many steps with durations first_s + i * growth_s start within ``window_s`` from now."""
    if window_s <= 0:
        return 0
    if math.isinf(window_s):
        return math.inf
    if growth_s <= 0:
        return math.ceil(window_s / first_s)
    # Step i starts at i * first + growth * i (i - 1) / 2; count i >= 0 with start < window.
    a, b = growth_s / 2, first_s - growth_s / 2
    i = (-b + math.sqrt(b * b + 4 * a * window_s)) / (2 * a)
    k = max(math.ceil(i), 1)

    def start(j):
        return j * first_s + growth_s * j * (j - 1) / 2

    # Correct float error in the root by a step either way.
    while k > 1 and start(k - 1) >= window_s:
        k -= 1
    while start(k) < window_s:
        k += 1
    return k


class _Simulation:
    def __init__(self, prompt_tokens: np.ndarray, output_tokens: np.ndarray):
        self.prompt_tokens = prompt_tokens.tolist()
        self.output_tokens = output_tokens.tolist()
        self.context_tokens = (prompt_tokens + output_tokens).tolist()
        n = len(prompt_tokens)
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.runs: list[tuple[float, float, int, int]] = []


def simulate(
    trace: pd.DataFrame,
    n_instances: int,
    model: ServingModel | None = None,
) -> SimulationResult:
    """Serve ``trace`` (timestamp s, input_tokens, output_tokens) on ``n_instances`` instances."""
    if n_instances < 1:
        raise UserError(f"n_instances={n_instances}: need at least one instance")
    model = model or ServingModel()
    arrival_s = trace["timestamp"].to_numpy(dtype=np.float64)
    order = np.argsort(arrival_s, kind="stable")
    prompt = np.maximum(trace["input_tokens"].to_numpy(dtype=np.int64), 1)
    output = np.maximum(trace["output_tokens"].to_numpy(dtype=np.int64), 1)
    sim = _Simulation(prompt, output)
    instances = [_Instance(model, sim) for _ in range(n_instances)]
    assigned = np.empty(len(arrival_s), dtype=np.int64)
    for request in order.tolist():
        t = float(arrival_s[request])
        for inst in instances:
            # An instance that cannot complete a request by t has the same queue at t: skip simulating it.
            if inst.earliest_completion_s() <= t:
                inst.advance(t)
        target = min(range(n_instances), key=lambda i: instances[i].outstanding_at(t))
        inst = instances[target]
        inst.advance(t)  # its steps before t must not see the new request
        inst.waiting.append(request)
        inst.outstanding += 1
        assigned[request] = target
    for inst in instances:
        inst.advance(math.inf)
    return _result(sim, arrival_s, output, assigned)


def _result(sim: _Simulation, arrival_s, output, assigned) -> SimulationResult:
    ttft = sim.first_token_s - arrival_s
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(output > 1, (sim.finish_s - sim.first_token_s) / (output - 1), np.nan)
    if sim.runs:
        first, growth, n, decoders = (np.asarray(x) for x in zip(*sim.runs))
        n = n.astype(np.int64)
        run_start = np.concatenate([[0], np.cumsum(n)[:-1]])
        within = np.arange(int(n.sum())) - np.repeat(run_start, n)
        step_s = np.repeat(first, n) + np.repeat(growth, n) * within
        step_decoders = np.repeat(decoders, n)
    else:
        step_s, step_decoders = np.zeros(0), np.zeros(0, dtype=np.int64)
    return SimulationResult(ttft, sim.finish_s, tpot, assigned, step_s, step_decoders)
