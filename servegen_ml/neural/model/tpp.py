"""The marked temporal point process: one model for every client stream, conditioned on a client embedding.

For each event the model scores, in order: the gap since the client's previous
event (:class:`GapMixture`), then per modality the item count and each item's
tokens, then the input (text) tokens, the output tokens and the reasoning part
of the output. Each head reads the GRU history state and the marks of the
current event drawn before it, so real dependence (input -> output, ...) is
learned rather than assumed away. A new mark (e.g. a conversation's
opens/follows flag) is one more head in :meth:`MarkedTPP._head_specs` and one
more condition entry.

Normalizers are registered buffers, so they travel in the state dict.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from servegen_ml.core.spec import TIME_RESOLUTION_S
from servegen_ml.neural import features as F
from servegen_ml.neural.data.client_marks import ClientMarks
from servegen_ml.neural.data.events import MarkLayout
from servegen_ml.neural.data.normalizers import Normalizers, activity_table
from servegen_ml.neural.model.distributions import CountMixture, GapMixture, RatioMixture
from servegen_ml.neural.model.encoder import EventEncoder
from servegen_ml.neural.model.heads import HeadSpec, HeadStack
from servegen_ml.neural.rate_level import UnitClock, cumulative_table, resolved_gap


class MarkedTPP(nn.Module):
    def __init__(
        self,
        n_clients: int,
        layout: dict,
        spikes: dict[str, list[int]],
        hidden: int = 64,
        embedding: int = 16,
        head_hidden: int = 64,
        time_components: int = 8,
        mark_components: int = 6,
        day_harmonics: int = 3,
        week_harmonics: int = 2,
        activity_bins: int = 1,
        activity_bin_s: float = 600.0,
        gap_resolution_s: float = 0.0,
    ):
        super().__init__()
        self.layout = MarkLayout.from_dict(layout)
        self.fields = self.layout.count_fields()
        self.harmonics = (day_harmonics, week_harmonics)
        self.time_components, self.mark_components = time_components, mark_components
        self.register_buffer("gap_log_mean", torch.zeros(n_clients))
        self.register_buffer("gap_log_std", torch.ones(n_clients))
        self.register_buffer("mark_mean", torch.zeros(len(self.fields)))
        self.register_buffer("mark_std", torch.ones(len(self.fields)))
        # Count fields' spikes are values; the reasoning ratio's are grid keys (draws.RATIO_SPIKE_SCALE).
        for f in self.fields + (["reasoning"] if self.layout.has_reasoning else []):
            self.register_buffer(f"spikes_{f}", torch.tensor(sorted(spikes.get(f, [])), dtype=torch.long))
        # Per client, the standardized log empirical rate per time bin of the learned timeline (see features).
        self.activity_bin_s = float(activity_bin_s)
        # Gaps shorter than this are read as this long by the features (rate_level.resolved_gap).
        self.gap_resolution_s = float(gap_resolution_s)
        self.register_buffer("activity", torch.zeros(n_clients, activity_bins))
        self.register_buffer("activity_span_s", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("activity_log_mean", torch.tensor(0.0))
        self.register_buffer("activity_log_std", torch.tensor(1.0))
        # Per client, the rate level (req/s per bin of the learned timeline, float64): gaps are modelled
        # in its unit time (servegen_ml.neural.rate_level).
        self.register_buffer("rate_level", torch.ones(n_clients, activity_bins, dtype=torch.float64))
        # Likelihood precision: float64 to score; training switches to float32 for speed.
        self.compute_dtype = torch.float64
        self.embedding = nn.Embedding(n_clients, embedding)
        nn.init.normal_(self.embedding.weight, std=0.1)
        n_event = len(F.event_feature_names(self.layout, day_harmonics, week_harmonics))
        self.encoder = EventEncoder(n_event, embedding, hidden)
        self.heads = HeadStack(hidden, head_hidden, self._head_specs(), n_clients)

    def _head_specs(self) -> list[HeadSpec]:
        visible = F.visible_prefix(self.layout)
        kt, km = self.time_components, self.mark_components
        specs = [HeadSpec("time", 1 + 3 * kt, 0, 1 + kt, kt)]
        for f in self.fields:
            v = len(self.spikes(f)) + 1
            specs.append(HeadSpec(f, v + 3 * km, visible[f], v + km, km))
        if self.layout.has_reasoning:
            v = 3 + len(self.spikes("reasoning"))
            specs.append(HeadSpec("reasoning", v + 3 * km, visible["reasoning"], v + km, km))
        return specs

    def spikes(self, field: str) -> Tensor:
        return getattr(self, f"spikes_{field}")

    def set_normalizers(self, norm: Normalizers) -> None:
        with torch.no_grad():
            self.gap_log_mean.copy_(torch.as_tensor(norm.gap_log_mean))
            self.gap_log_std.copy_(torch.as_tensor(norm.gap_log_std))
            self.mark_mean.copy_(torch.tensor([norm.mark_mean[f] for f in self.fields]))
            self.mark_std.copy_(torch.tensor([norm.mark_std[f] for f in self.fields]))

    def init_marks(self, marks: ClientMarks, norm: Normalizers) -> None:
        """Start every head at the pooled training marginal (shared output biases) and each client's
        offsets at its own (:mod:`servegen_ml.neural.data.client_marks`): category logits at log
        shares, component k centred on quantile (k + 1/2) / K, as wide as its quantile interval.
        The time head keeps its generic start (data.client_marks says why).
        """
        for spec in self.heads.specs:
            m = marks.heads.get(spec.name)
            if m is None:
                continue
            pooled, client = m.category_logits()
            self._set_head_start(spec.name, 0, pooled, client)
            k = spec.n_components
            probs = np.concatenate([(np.arange(k) + 0.5) / k, np.arange(k + 1) / k])
            pooled_q, client_q = m.quantiles(probs)
            if np.isnan(pooled_q).any():  # no continuous values at all: every value is a spike
                continue
            if spec.name in self.fields:
                mean, std = norm.mark_mean[spec.name], norm.mark_std[spec.name]
                pooled_q, client_q = (pooled_q - mean) / std, (client_q - mean) / std
            self._set_head_start(
                spec.name, spec.loc_offset, _components(pooled_q, k), _components(client_q, k)
            )

    def _set_head_start(self, name: str, at: int, pooled: np.ndarray, client: np.ndarray) -> None:
        """Head ``name``'s raw parameters [at, at + n): the shared bias to ``pooled`` (n,), each
        client's offsets so that bias + offset = its row of ``client`` (C, n)."""
        first = self.heads.slices[name][0] + at
        n = pooled.shape[-1]
        bias, offsets = self.heads.out[name].bias, self.heads.client_offsets.weight
        with torch.no_grad():
            bias[at : at + n] = torch.as_tensor(pooled, dtype=bias.dtype)
            offsets[:, first : first + n] = torch.as_tensor(client - pooled, dtype=offsets.dtype)

    def set_activity(self, rates, span_s: float) -> None:
        """Activity table from per-client empirical rates (C, bins) in req/s over the learned span [0, span_s)."""
        table, mean, std = activity_table(rates, span_s)
        with torch.no_grad():
            self.activity.copy_(torch.as_tensor(table))
            self.activity_span_s.fill_(float(span_s))
            self.activity_log_mean.fill_(mean)
            self.activity_log_std.fill_(std)

    def set_rate_level(self, level) -> None:
        """Rate level (C, bins) req/s over the same bins as the activity table (set_activity first)."""
        with torch.no_grad():
            self.rate_level.copy_(torch.as_tensor(np.asarray(level, dtype=np.float64)))

    def unit_clock(self, level: Tensor) -> UnitClock:
        """The clients' unit time (float64 positions) under a rate level table (C, bins)."""
        span, bin_s = float(self.activity_span_s), self.activity_bin_s
        lv = level.to(torch.float64)
        cum = torch.from_numpy(cumulative_table(lv.detach().cpu().numpy(), bin_s, span)).to(lv.device)
        return UnitClock(torch, lv, cum, bin_s, span)

    def client_inputs(self, client: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Embedding (B, E) and log-gap normalizer (B,), (B,) of client indices (B,)."""
        return self.embedding(client), self.gap_log_mean[client], self.gap_log_std[client]

    # -- distributions from raw head outputs -------------------------------------------------

    def gap_dist(self, raw: Tensor) -> GapMixture:
        """The next gap in the client's unit time, its mean pinned to 1 (features.unit_gap_params)."""
        params = F.unit_gap_params(torch, raw.to(self.compute_dtype), self.time_components)
        return GapMixture(*params, self.compute_dtype)

    def count_dist(self, field: str, raw: Tensor) -> CountMixture:
        spikes = self.spikes(field)
        logits, comp, loc, log_scale = F.split_params(raw, len(spikes) + 1, self.mark_components)
        i = self.fields.index(field)
        loc, log_scale = F.destandardize(torch, loc, log_scale, self.mark_mean[i], self.mark_std[i])
        floor = F.count_floor(float(self.mark_mean[i]), float(self.mark_std[i]))
        return CountMixture(spikes, logits, comp, loc, log_scale, self.compute_dtype, *floor)

    def ratio_dist(self, raw: Tensor) -> RatioMixture:
        spikes = self.spikes("reasoning")
        params = F.split_params(raw, 3 + len(spikes), self.mark_components)
        return RatioMixture(*params, self.compute_dtype, spikes)

    # -- scoring ----------------------------------------------------------------------------

    def event_features(self, time_s, gap_s, is_start, gap_mean, gap_std, marks, client, activity) -> Tensor:
        """Encoder inputs; ``activity[client]`` is each event's client row of an activity table."""
        span = float(self.activity_span_s)
        time_s = F.feature_position(torch, time_s, span)
        act = F.activity_features(torch, activity, client, time_s, self.activity_bin_s, span)
        feats = F.event_features(
            torch, self.layout, time_s, gap_s, is_start, gap_mean, gap_std, marks,
            self.mark_mean, self.mark_std, self.fields, self.harmonics, act,
        )  # fmt: skip
        return torch.stack(feats, -1).float()

    def forward(
        self,
        batch: dict[str, Tensor],
        emb: Tensor,
        gap_mean: Tensor,
        gap_std: Tensor,
        h0: Tensor,
        activity: Tensor | None = None,
        level: Tensor | None = None,
        offsets: Tensor | None = None,
        slots: tuple[float, float] | None = None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Per-event log-likelihood parts (B, T) in ``compute_dtype`` of a batch (see data.chunks.gather_batch), and h_last.

        ``activity``, ``level`` and ``offsets`` (the heads' per-client offsets) are the tables
        ``batch["client"]`` indexes (default: the model's own clients). The time part is log P(gap in [g, g + 1 ms)) in real time, computed exactly as
        the probability of that bin mapped into the client's unit time. ``slots=(origin_s, quantum_s)``:
        the events' times are spread within slots (data.slots); the time part is then the probability
        that the event falls in its slot, given the previous event's (spread) time.
        """
        activity = self.activity if activity is None else activity
        offsets = self.heads.client_offsets.weight if offsets is None else offsets
        off = offsets[batch["client"]]
        unit = self.unit_clock(self.rate_level if level is None else level)
        client = batch["client"].unsqueeze(1)
        gm, gs = gap_mean.unsqueeze(1), gap_std.unsqueeze(1)
        t, t_prev = batch["time_s"], batch["x_time_s"]
        gap = unit.span(client, t_prev, t).clamp(min=0.0)
        if slots is None:
            lower, width, positive = gap, unit.span(client, t, t + TIME_RESOLUTION_S), batch["gap_s"] > 0
        else:
            origin, quantum = slots
            start = origin + torch.floor((t - origin) / quantum) * quantum
            after = torch.maximum(start, t_prev)
            lower = unit.span(client, t_prev, after).clamp(min=0.0)
            width, positive = unit.span(client, after, start + quantum), start > t_prev
        x_gap = unit.span(client, t_prev - batch["x_gap_s"], t_prev).clamp(min=0.0)
        x_gap = resolved_gap(torch, x_gap, batch["x_gap_s"], self.gap_resolution_s)
        read_gap = resolved_gap(torch, gap, batch["gap_s"], self.gap_resolution_s)
        x_marks = {name: batch[f"x_{name}"] for name in self.layout.mark_columns()}
        x = self.event_features(t_prev, x_gap, batch["x_start"], gm, gs, x_marks, client, activity)
        states, h_last = self.encoder(x, emb, h0)
        y_marks = {name: batch[f"y_{name}"] for name in self.layout.mark_columns()}
        cond = F.condition_features(
            torch, self.layout, read_gap, gm, gs, y_marks, self.mark_mean, self.mark_std, self.fields
        )
        cond = torch.stack(cond, -1).float()
        proj = self.heads.project(states)
        off_t = off.unsqueeze(1)
        time_dist = self.gap_dist(self.heads.raw("time", proj, None, off_t))
        parts = {"time": time_dist.log_prob_interval(lower, width, positive)}
        survival = self._survival(batch, read_gap, states, emb, gm, gs, y_marks, activity, unit, off)
        parts["time"] = parts["time"] + survival
        for m in self.layout.modalities:
            parts[f"{m}_count"] = self.count_dist(
                f"{m}_count", self.heads.raw(f"{m}_count", proj, cond, off_t)
            ).log_prob(batch[f"y_{m}_count"].long())
            parts[f"{m}_tokens"] = self._items_log_prob(m, proj, cond, off_t, batch)
        for f in ("input", "output"):
            raw = self.heads.raw(f, proj, cond, off_t)
            parts[f] = self.count_dist(f, raw).log_prob(batch[f"y_{f}"].long())
        if self.layout.has_reasoning:
            dist = self.ratio_dist(self.heads.raw("reasoning", proj, cond, off_t))
            parts["reasoning"] = dist.log_prob(batch["y_reasoning"].long(), batch["y_output"].long())
        mask = batch["mask"]
        return {k: torch.where(mask, v, torch.zeros_like(v)) for k, v in parts.items()}, h_last

    def _survival(self, batch, gap, states, emb, gm, gs, y_marks, activity, unit, off) -> Tensor:
        """log P(no event before the window end) after each segment's last event; 0 elsewhere.

        ``gap``: the events' unit gaps as the features read them; ``unit``: the clients' unit
        clock (:meth:`unit_clock`); ``off``: the lanes' rows of head offsets.
        """
        s = batch["survival_s"]
        out = torch.zeros_like(s)
        sel = ~torch.isnan(s)
        if not bool(sel.any()):
            return out
        b_idx = sel.nonzero()[:, 0]
        marks = {k: v[sel] for k, v in y_marks.items()}
        client = batch["client"][b_idx]
        t = batch["time_s"][sel]
        x = self.event_features(
            t, gap[sel], torch.zeros_like(s[sel], dtype=torch.bool),
            gm.squeeze(1)[b_idx], gs.squeeze(1)[b_idx], marks, batch["client"][b_idx], activity,
        )  # fmt: skip
        # One more GRU step: the state after the last event itself sets the survival's gap distribution.
        _, h_after = self.encoder(x.unsqueeze(1), emb[b_idx], states[sel])
        raw = self.heads.raw("time", self.heads.project(h_after), None, off[b_idx])
        left = unit.span(client, t, t + s[sel])
        out[sel] = self.gap_dist(raw).log_survival(left).to(out.dtype)
        return out

    def _items_log_prob(self, m: str, proj: Tensor, cond: Tensor, off: Tensor, batch) -> Tensor:
        """Sum over each event's items of log P(item tokens); items are i.i.d. given the event's context."""
        b, t = batch["mask"].shape
        owner = batch[f"items_{m}_owner"]
        raw = self.heads.raw(f"{m}_tokens", proj, cond, off).reshape(b * t, -1)[owner]
        lp = self.count_dist(f"{m}_tokens", raw).log_prob(batch[f"items_{m}"].long())
        total = torch.zeros(b * t, dtype=lp.dtype, device=lp.device).index_add_(0, owner, lp)
        return total.reshape(b, t)


def _components(q: np.ndarray, k: int) -> np.ndarray:
    """(..., 2K) locations and log widths of K components from quantiles (..., 3K + 1) at the K
    midpoints (k + 1/2) / K and the K + 1 edges k / K."""
    width = np.diff(q[..., k:], axis=-1)
    return np.concatenate([q[..., :k], np.log(np.clip(width, 0.05, 2.0))], -1)
