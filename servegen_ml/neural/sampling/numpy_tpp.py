"""The trained TPP's sampling step in numpy: no torch import, no per-call framework overhead.

One eager torch GRU step costs ~80 us on a small CPU whatever the batch; the
same step as a few numpy matrix products over a batch of rows costs a few
microseconds per op. :class:`NumpyTPP` reads a :class:`MarkedTPP` state dict
(numpy arrays, e.g. from safetensors) and reproduces its equations exactly,
sharing the feature code (:mod:`servegen_ml.neural.features`) and the samplers
(:mod:`servegen_ml.neural.sampling.draws`) with the torch side.
"""

from __future__ import annotations

import numpy as np

from servegen_ml.neural import features as F
from servegen_ml.neural.data.events import MarkLayout
from servegen_ml.neural.sampling import draws as S


class RowBias:
    """Each row's client's :meth:`NumpyTPP.client_bias`, gathered one head's columns at a time."""

    def __init__(self, table: np.ndarray, client: np.ndarray):
        self.table, self.client = table, client

    def columns(self, lo: int, hi: int) -> np.ndarray:
        return self.table[self.client, lo:hi]


class NumpyTPP:
    """Sampling step of a trained :class:`~servegen_ml.neural.model.tpp.MarkedTPP` (float32 numpy)."""

    def __init__(self, model: dict, weights: dict[str, np.ndarray], max_count: dict[str, int]):
        self.layout = MarkLayout.from_dict(model["layout"])
        self.fields = self.layout.count_fields()
        self.harmonics = (model.get("day_harmonics", 3), model.get("week_harmonics", 2))
        self.kt, self.km = model.get("time_components", 8), model.get("mark_components", 6)
        self.max_count = max_count
        self.gap_resolution_s = float(model.get("gap_resolution_s", 0.0))
        w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items() if not k.startswith("spikes_")}
        spiked = self.fields + (["reasoning"] if self.layout.has_reasoning else [])
        self.spikes = {f: np.asarray(weights[f"spikes_{f}"], dtype=np.int64) for f in spiked}
        self.embedding = w["embedding.weight"]
        self.activity, self.activity_bin_s = w["activity"], float(model.get("activity_bin_s", 600.0))
        self.activity_span_s = float(weights["activity_span_s"])
        self.gap_log_mean, self.gap_log_std = w["gap_log_mean"], w["gap_log_std"]
        self.rate_level = np.asarray(weights["rate_level"], dtype=np.float64)
        self.mark_mean, self.mark_std = w["mark_mean"].astype(np.float64), w["mark_std"].astype(np.float64)
        self.init_w, self.init_b = w["encoder.initial.weight"].T.copy(), w["encoder.initial.bias"]
        n_event = len(F.event_feature_names(self.layout, *self.harmonics))
        w_ih = w["encoder.gru.weight_ih_l0"]
        self.w_ih_event, self.w_ih_emb = w_ih[:, :n_event].T.copy(), w_ih[:, n_event:].T.copy()
        self.b_ih, self.w_hh, self.b_hh = (
            w["encoder.gru.bias_ih_l0"],
            w["encoder.gru.weight_hh_l0"].T.copy(),
            w["encoder.gru.bias_hh_l0"],
        )
        self.hidden = self.w_hh.shape[0]
        self.w_hist, self.b_hist = w["heads.from_history.weight"].T.copy(), w["heads.from_history.bias"]
        self.head_names = ["time"] + self.fields + (["reasoning"] if self.layout.has_reasoning else [])
        self.head_hidden = self.w_hist.shape[1] // len(self.head_names)
        self.w_cond = {
            n: w[f"heads.from_condition.{n}.weight"].T.copy()
            for n in self.head_names
            if f"heads.from_condition.{n}.weight" in w
        }
        self.w_out = {n: w[f"heads.out.{n}.weight"].T.copy() for n in self.head_names}
        b_out = [w[f"heads.out.{n}.bias"] for n in self.head_names]
        # Per-client offsets of the heads' raw parameters (C, P) are in head order, each head's slice here.
        self.bias = np.concatenate(b_out)
        ends = np.cumsum([len(b) for b in b_out])
        self.slices = {n: (int(e - len(b)), int(e)) for n, b, e in zip(self.head_names, b_out, ends)}

    # -- recurrent part ---------------------------------------------------------------------

    def client_rows(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Initial state (B, H) and the embedding's constant share of the GRU input gates (B, 3H)."""
        emb = emb.astype(np.float32)
        return np.tanh(emb @ self.init_w + self.init_b), emb @ self.w_ih_emb + self.b_ih

    def event_features(
        self, time_s, gap_s, is_start, gap_mean, gap_std, marks, activity, client
    ) -> np.ndarray:
        """Encoder inputs of events at learned-timeline positions ``time_s``; ``activity[client]`` their rows."""
        time_s = F.feature_position(np, time_s, self.activity_span_s)
        act = F.activity_features(np, activity, client, time_s, self.activity_bin_s, self.activity_span_s)
        feats = F.event_features(
            np, self.layout, time_s, gap_s, is_start, gap_mean, gap_std, marks,
            self.mark_mean, self.mark_std, self.fields, self.harmonics, act,
        )  # fmt: skip
        return np.stack(feats, -1).astype(np.float32)

    def gru_step(self, h: np.ndarray, events: np.ndarray, emb_gates: np.ndarray) -> np.ndarray:
        """PyTorch GRU equations, gates ordered (r, z, n); in-place updates keep temporaries few."""
        hs = self.hidden
        gi = events @ self.w_ih_event
        gi += emb_gates
        gh = h @ self.w_hh
        gh += self.b_hh
        rz = gi[:, : 2 * hs]
        rz += gh[:, : 2 * hs]
        # sigmoid(x) = (1 + tanh(x / 2)) / 2: numpy's tanh is vectorized, scipy's expit is not.
        rz *= 0.5
        np.tanh(rz, out=rz)
        rz *= 0.5
        rz += 0.5
        n = gh[:, 2 * hs :]
        n *= rz[:, :hs]
        n += gi[:, 2 * hs :]
        np.tanh(n, out=n)
        out = h - n
        out *= rz[:, hs:]
        out += n
        return out

    # -- heads ------------------------------------------------------------------------------

    def project(self, h: np.ndarray) -> np.ndarray:
        return h @ self.w_hist + self.b_hist

    def client_bias(self, offsets: np.ndarray) -> np.ndarray:
        """(C, P) what each client adds to the heads' output layers: its offsets plus the shared biases."""
        return np.asarray(offsets, dtype=np.float32) + self.bias

    def raw(self, name: str, projected, condition, bias: RowBias | None) -> np.ndarray:
        """Raw parameters of head ``name`` for rows whose clients' :meth:`client_bias` is ``bias``
        (None: the shared biases only, no client's offsets)."""
        j = self.head_names.index(name)
        pre = projected[:, j * self.head_hidden : (j + 1) * self.head_hidden]
        if name in self.w_cond:
            pre = pre + condition[:, : self.w_cond[name].shape[0]] @ self.w_cond[name]
        out = np.maximum(pre, 0.0) @ self.w_out[name]
        lo, hi = self.slices[name]
        out += self.bias[lo:hi] if bias is None else bias.columns(lo, hi)
        return out

    def sample_gap(self, projected, bias, rng, forward: np.ndarray | None = None) -> np.ndarray:
        """Next gap (B,) in the client's unit time (mean 1) given the projected history state.

        Where ``forward`` is set the row starts at an arbitrary moment rather than at an event:
        its first gap is the forward recurrence time (:func:`draws.sample_forward_gap`).
        """
        raw = self.raw("time", projected, None, bias).astype(np.float64)
        zero, comp, loc, log_scale = F.unit_gap_params(np, raw, self.kt)
        gap = S.sample_gap(zero, comp, loc, log_scale, rng)
        if forward is not None and forward.any():
            gap[forward] = S.sample_forward_gap(comp[forward], loc[forward], log_scale[forward], rng)
        return gap

    def _sample_count(self, field, raw, rng, owner: np.ndarray | None = None) -> np.ndarray:
        spikes = self.spikes[field]
        # Spike logits stay in the heads' float32 (only sampled from); the mixture goes to float64.
        logits, comp, loc, log_scale = F.split_params(raw, len(spikes) + 1, self.km)
        comp, loc, log_scale = (x.astype(np.float64) for x in (comp, loc, log_scale))
        i = self.fields.index(field)
        loc, log_scale = F.destandardize(np, loc, log_scale, self.mark_mean[i], self.mark_std[i])
        cap = max(2 * self.max_count.get(field, 0), 16)
        floor = F.count_floor(float(self.mark_mean[i]), float(self.mark_std[i]))
        return S.sample_count(spikes, logits, comp, loc, log_scale, cap, rng, floor, owner)

    def sample_marks(self, projected, bias, gap_s, gap_mean, gap_std, rng) -> tuple[dict, dict]:
        """Marks of events whose gap is drawn, in conditioning order (``bias``: see :meth:`raw`).

        Returns (marks, items): marks has ``input`` (base tokens), ``output``,
        ``reasoning``, ``{m}_count``, ``{m}_item_log``; items maps a modality to
        its flat item tokens (row-major, ``{m}_count`` per row).
        """
        b = len(gap_s)
        names = F.condition_names(self.layout)
        cond = np.zeros((b, len(names)), dtype=np.float32)
        cond[:, 0] = F.gap_feature(np, gap_s, gap_mean, gap_std)
        cond[:, 1] = gap_s <= 0
        marks, items = {}, {}
        for m in self.layout.modalities:
            marks[f"{m}_count"], items[m], marks[f"{m}_item_log"] = self.sample_items(
                m, projected, bias, cond, names, rng
            )
        for f in ("input", "output"):
            marks[f] = self._sample_count(f, self.raw(f, projected, cond, bias), rng)
            i = self.fields.index(f)
            cond[:, names.index(f"z_{f}")] = (np.log1p(marks[f]) - self.mark_mean[i]) / self.mark_std[i]
        if self.layout.has_reasoning:
            marks["reasoning"] = self.sample_reasoning(projected, cond, bias, marks["output"], rng)
        return marks, items

    def sample_reasoning(self, projected, cond, bias, output: np.ndarray, rng) -> np.ndarray:
        """Reasoning tokens of ``output`` tokens (``cond`` holds the output's entry)."""
        spikes = self.spikes["reasoning"]
        logits, comp, loc, log_scale = F.split_params(
            self.raw("reasoning", projected, cond, bias).astype(np.float64), 3 + len(spikes), self.km
        )
        return S.sample_ratio_tokens(logits, comp, loc, log_scale, output, rng, spikes)

    def sample_items(self, m, projected, bias, cond, names, rng):
        """Item counts, flat item tokens and mean log item tokens of modality ``m``; fills ``cond``."""
        counts = self._sample_count(f"{m}_count", self.raw(f"{m}_count", projected, cond, bias), rng)
        i, j = self.fields.index(f"{m}_count"), self.fields.index(f"{m}_tokens")
        cond[:, names.index(f"z_{m}_count")] = (np.log1p(counts) - self.mark_mean[i]) / self.mark_std[i]
        raw = self.raw(f"{m}_tokens", projected, cond, bias)
        # Each item is drawn from its event's distribution, computed once per event.
        owner = np.repeat(np.arange(len(counts)), counts)
        tokens = self._sample_count(f"{m}_tokens", raw, rng, owner)
        ends = np.cumsum(counts)
        log_sum = np.concatenate([[0.0], np.cumsum(np.log1p(tokens))])
        item_log = np.where(counts > 0, (log_sum[ends] - log_sum[ends - counts]) / np.maximum(counts, 1), 0.0)
        z_item = (item_log - self.mark_mean[j]) / self.mark_std[j]
        cond[:, names.index(f"z_{m}_item")] = np.where(counts > 0, z_item, 0.0)
        return counts, tokens, item_log
