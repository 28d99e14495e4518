"""The neural conversation heads: given a turn, will another follow, after what gap, with how many new tokens.

Input per turn (:func:`~servegen_ml.conversations.neural.features.turn_features`,
numpy, shared by training, sampling and scoring): the conversation's client
vector (its TPP embedding, log-gap normalizer and log rate, standardized over
clients; frozen), log1p of the turn's output and input tokens
(standardized), the log of its position (held at the longest conversation
seen in training), and time-of-day / day-of-week Fourier features of its
arrival (wrapped into the learned timeline).

A shared two-layer MLP feeds four heads:

* **continue**: a Bernoulli logit, ``h = P(this turn is followed by another)``;
* **gap**: the inter-turn gap (arrival to arrival, s) as a
  :class:`~servegen_ml.neural.model.distributions.GapMixture` (a point mass at 0 and
  a log-normal mixture, standardized by the training gaps' log mean and std),
  put on the trace's timestamp lattice where it has one (:class:`LatticeGap`);
* **new tokens** of the follow-up (its prompt minus the previous prompt and
  answer, clipped at 0) as a :class:`~servegen_ml.neural.model.distributions.CountMixture`
  (frequent exact values plus a discretized normal mixture on log1p, with the
  broad floor of the TPP's count heads);
* **output** tokens of the follow-up, a CountMixture as well, which also sees
  the follow-up's new tokens and grown prompt
  (:func:`~servegen_ml.conversations.neural.features.output_condition`).
  Why not the point process's own output head: it is trained on openers, and
  follow-up prompts (the whole conversation so far) lie beyond the openers'
  range, where a small model's learned output | input dependence extrapolates
  badly (on the test fixture, whose outputs do not depend on the prompt, it
  drew follow-up outputs 15 % short, and the inter-turn gaps, which grow with
  the previous output, came out short with them).

The likelihood of a turn (:meth:`ConversationHeads.log_likelihood`) is exact
and censored: a followed turn scores ``log h + log P(gap in its 1 ms step) +
log P(new tokens) + log P(the follow-up's output)``, a last turn ``log[(1 - h) + h * S(window_end - t)]``, as
:mod:`servegen_ml.conversations.likelihood` does.
:class:`~servegen_ml.conversations.neural.numpy_heads.NumpyConversationHeads`
evaluates the same network in numpy for sampling; scoring builds these torch
distributions from its raw outputs (:func:`gap_distribution`, :func:`count_distribution`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from servegen_ml.conversations.neural.features import JITTER_FLOOR, n_raw
from servegen_ml.core.spec import TIME_RESOLUTION_S
from servegen_ml.neural import features as F
from servegen_ml.neural.model.distributions import CountMixture, GapMixture


class ConversationHeads(nn.Module):
    def __init__(
        self,
        n_features: int,
        hidden: int,
        time_components: int,
        mark_components: int,
        n_spikes: int,
        n_output_spikes: int = 0,
        n_jitter: int = 0,
    ):
        super().__init__()
        self.kt, self.km = time_components, mark_components
        self.trunk = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        n_cont, n_gap, n_new, n_out = n_raw(time_components, mark_components, n_spikes, n_output_spikes)
        self.out_continue = nn.Linear(hidden, n_cont)
        self.out_gap = nn.Linear(hidden, n_gap)
        self.out_new = nn.Linear(hidden, n_new)
        # The output head: relu(W_h hidden + W_c [new tokens, prompt] + b) -> raw parameters.
        self.output_from_hidden = nn.Linear(hidden, hidden)
        self.output_from_condition = nn.Linear(2, hidden, bias=False)
        self.out_output = nn.Linear(hidden, n_out)
        self.register_buffer("spikes", torch.zeros(n_spikes, dtype=torch.long))
        self.register_buffer("output_spikes", torch.zeros(n_output_spikes, dtype=torch.long))
        # Timestamp lattice (see LatticeGap): quantum (0: none) and the jitter around it (ms values, shares).
        self.register_buffer("gap_quantum_s", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("jitter_ms", torch.zeros(n_jitter, dtype=torch.long))
        self.register_buffer("jitter_prob", torch.zeros(n_jitter, dtype=torch.float64))
        for name in ("gap_log", "new", "output"):
            self.register_buffer(f"{name}_mean", torch.tensor(0.0))
            self.register_buffer(f"{name}_std", torch.tensor(1.0))
        # Likelihood precision: float64 to score; training switches to float32 for speed.
        self.compute_dtype = torch.float64
        # Start near a spread of unit mixtures so components do not collapse onto one location.
        for layer, offset, k in (
            (self.out_gap, 1 + time_components, time_components),
            (self.out_new, n_spikes + 1 + mark_components, mark_components),
            (self.out_output, n_output_spikes + 1 + mark_components, mark_components),
        ):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
            with torch.no_grad():
                layer.bias[offset : offset + k] = torch.linspace(-1.5, 1.5, k)

    def set_normalizers(self, norm: dict, continue_rate: float) -> None:
        """Normalizer buffers from :func:`~servegen_ml.conversations.neural.fit.fit_turn_normalizers`.

        The continuation probability, the zero-gap mass and the new-token spikes start at their training
        shares (a point mass started at 1/2 takes long to shrink and shortens early models' gaps).
        """
        with torch.no_grad():
            self.spikes.copy_(torch.as_tensor(norm["new_tokens_spikes"], dtype=torch.long))
            self.output_spikes.copy_(torch.as_tensor(norm["output_spikes"], dtype=torch.long))
            for name in ("gap_log_mean", "gap_log_std", "new_mean", "new_std", "output_mean", "output_std"):
                getattr(self, name).fill_(float(norm[name]))
            self.gap_quantum_s.fill_(float(norm["gap_quantum_s"]))
            self.jitter_ms.copy_(torch.as_tensor(norm["gap_jitter_ms"], dtype=torch.long))
            self.jitter_prob.copy_(torch.as_tensor(norm["gap_jitter_prob"], dtype=torch.float64))
            self.out_continue.bias.fill_(_logit(continue_rate))
            self.out_gap.bias[0] = _logit(norm["gap_zero_share"])
            starts = (
                (self.out_new, norm["new_tokens_spike_shares"]),
                (self.out_output, norm["output_spike_shares"]),
            )
            for layer, shares in starts:
                shares = np.asarray(shares, dtype=np.float64)
                rest = max(1.0 - shares.sum(), 1e-3)
                layer.bias[: len(shares) + 1] = torch.as_tensor(
                    np.log(np.r_[shares, rest]), dtype=torch.float32
                )

    def forward(self, x: Tensor, condition: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Raw outputs of features x (n, F) and output conditions (n, 2): continue logit (n,), gap (n, 1 + 3Kt),
        new tokens (n, V + 1 + 3Km), output (n, V' + 1 + 3Km)."""
        hidden = self.trunk(x)
        pre = self.output_from_hidden(hidden) + self.output_from_condition(condition)
        output = self.out_output(torch.relu(pre))
        return self.out_continue(hidden)[..., 0], self.out_gap(hidden), self.out_new(hidden), output

    def log_likelihood(
        self, x: Tensor, condition: Tensor, followed: Tensor, gap_s: Tensor, new_tokens: Tensor, output_tokens: Tensor,
        censor_s: Tensor,
    ) -> Tensor:  # fmt: skip
        """Per-turn log-likelihood (module docstring); followed (n,) bool, the rest (n,) of the turn after."""
        logit, gap_raw, new_raw, out_raw = self(x, condition)
        gap = gap_distribution(self, gap_raw, self.compute_dtype)
        new = count_distribution(self, "new", new_raw, self.compute_dtype)
        output = count_distribution(self, "output", out_raw, self.compute_dtype)
        logit = logit.to(self.compute_dtype)
        log_h, log_stop = nn.functional.logsigmoid(logit), nn.functional.logsigmoid(-logit)
        followed_lp = log_h + gap.log_prob(gap_s) + new.log_prob(new_tokens)
        followed_lp = followed_lp + output.log_prob(output_tokens)
        last_lp = torch.logaddexp(log_stop, log_h + gap.log_survival(censor_s))
        return torch.where(followed, followed_lp, last_lp)


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


@dataclass
class LatticeGap:
    """The inter-turn gap on the trace's timestamp lattice, if it has one.

    Some logs stamp requests in slots (Mooncake: multiples of 3 s, +-3 ms).
    With quantum ``q`` > 0 a gap is ``k q + j`` ms: ``k`` is the continuous
    mixture's draw rounded to the lattice (P(k) = its mass on
    ``[(k - 1/2) q, (k + 1/2) q)``, the point mass at 0 in k = 0), ``j`` the
    jitter, from its empirical shares mixed with JITTER_FLOOR of a uniform
    over the slot, so every gap keeps a probability. ``log_prob`` is then
    log P(k) + log P(j): log P(gap in its 1 ms step). With q = 0 it is the
    GapMixture's own. The survival ignores the few-ms jitter.
    """

    mixture: GapMixture
    quantum_s: float
    jitter_ms: Tensor  # (J,) sorted int64
    jitter_prob: Tensor  # (J,) float64

    def log_prob(self, gap_s: Tensor) -> Tensor:
        if self.quantum_s <= 0:
            return self.mixture.log_prob(gap_s, TIME_RESOLUTION_S)
        q, d = self.quantum_s, self.mixture.dtype
        g = gap_s.to(d)
        k = torch.floor(g / q + 0.5)
        lattice = self.mixture.log_prob(torch.clamp((k - 0.5) * q, min=0.0), q)
        at_zero = self.mixture.log_prob(torch.zeros_like(g), 0.5 * q)
        j = torch.round((g - k * q) / TIME_RESOLUTION_S).long()
        return torch.where(k > 0, lattice, at_zero) + self.log_jitter(j)

    def log_jitter(self, j: Tensor) -> Tensor:
        cells = max(round(self.quantum_s / TIME_RESOLUTION_S), 1)
        off = math.log(JITTER_FLOOR / cells)
        if len(self.jitter_ms) == 0:
            return torch.full_like(j, 0, dtype=torch.float64) + off
        idx = torch.searchsorted(self.jitter_ms, j.contiguous()).clamp(max=len(self.jitter_ms) - 1)
        hit = self.jitter_ms[idx] == j
        on = torch.log((1 - JITTER_FLOOR) * self.jitter_prob[idx] + JITTER_FLOOR / cells)
        return torch.where(hit, on, torch.full_like(on, off))

    def log_survival(self, x_s: Tensor) -> Tensor:
        if self.quantum_s <= 0:
            return self.mixture.log_survival(x_s)
        q = self.quantum_s
        x = x_s.to(self.mixture.dtype)
        # P(k q >= x) = P(continuous draw >= (ceil(x / q) - 1/2) q); 1 for x <= 0.
        edge = (torch.ceil(x / q - 1e-9) - 0.5) * q
        return torch.where(x > 0, self.mixture.log_survival(torch.clamp(edge, min=1e-9)), torch.zeros_like(x))


def gap_distribution(buffers, raw: Tensor, dtype: torch.dtype) -> LatticeGap:
    """The gap head's distribution of raw outputs; ``buffers`` holds kt, the normalizer and the lattice."""
    zero, comp, loc, log_scale = F.split_params(raw, 1, buffers.kt)
    loc, log_scale = F.destandardize(torch, loc, log_scale, buffers.gap_log_mean, buffers.gap_log_std)
    mixture = GapMixture(zero[..., 0], comp, loc, log_scale, dtype)
    return LatticeGap(mixture, float(buffers.gap_quantum_s), buffers.jitter_ms, buffers.jitter_prob)


def count_distribution(buffers, name: str, raw: Tensor, dtype: torch.dtype) -> CountMixture:
    """The ``new`` (new tokens) or ``output`` head's CountMixture of raw outputs."""
    spikes = buffers.spikes if name == "new" else buffers.output_spikes
    mean, std = getattr(buffers, f"{name}_mean"), getattr(buffers, f"{name}_std")
    logits, comp, loc, log_scale = F.split_params(raw, len(spikes) + 1, buffers.km)
    loc, log_scale = F.destandardize(torch, loc, log_scale, mean, std)
    floor = F.count_floor(float(mean), float(std))
    return CountMixture(spikes, logits, comp, loc, log_scale, dtype, *floor)
