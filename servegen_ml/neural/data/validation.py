"""Which events validate: interleaved time blocks of the training window.

Criterion: the window ``[origin_s, end_s)`` is cut into blocks of ``block_s``;
in every run of ``period = round(1 / val_fraction)`` blocks the last one
validates and the others train (so validation holds ``1 / period`` of the
time, e.g. every 10th hour). Blocks are ``VAL_BLOCK_S`` (an hour) long, shorter
where the window is too short for ``MIN_VAL_BLOCKS`` validation blocks. Why not
the latest share of the span: a trace's end is one time of day and often a
quiet one, so early stopping on it judged the model on the traffic it sees
least; interleaved blocks cover the whole day (an hour block every 10 hours
moves 10 hours around the clock each time) and every part of the trace.

Training segments run over each stretch of training blocks, starting with a
start token at the stretch start (the validation events before it are never
an input) and ending with a survival term at the next validation block.
Validation segments run over one validation block and continue from the
client's previous (training) event.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from servegen_ml.neural.data.chunks import Segments
from servegen_ml.neural.data.events import EventStore

VAL_BLOCK_S = 3600.0
MIN_VAL_BLOCKS = 4


@dataclass(frozen=True)
class ValidationBlocks:
    origin_s: float
    end_s: float
    block_s: float
    period: int  # 0: nothing validates

    @classmethod
    def for_window(
        cls,
        start_s: float,
        end_s: float,
        val_fraction: float,
        block_s: float = VAL_BLOCK_S,
        min_blocks: int = MIN_VAL_BLOCKS,
    ) -> ValidationBlocks:
        span = max(float(end_s) - float(start_s), 1e-9)
        if not val_fraction > 0:
            return cls(float(start_s), float(end_s), span, 0)
        if val_fraction >= 1:
            raise ValueError(f"val_fraction={val_fraction}: must be below 1 (a share of the time span)")
        period = max(2, round(1.0 / val_fraction))
        return cls(float(start_s), float(end_s), min(block_s, span / (period * min_blocks)), period)

    def to_dict(self) -> dict:
        return asdict(self)

    def is_validation(self, t_s: np.ndarray) -> np.ndarray:
        t = np.asarray(t_s, dtype=np.float64)
        if self.period == 0:
            return np.zeros(t.shape, dtype=bool)
        block = np.floor((t - self.origin_s) / self.block_s).astype(np.int64)
        return block % self.period == self.period - 1

    def validation_seconds(self, a_s: np.ndarray, b_s: np.ndarray) -> np.ndarray:
        """Seconds of each interval ``[a, b)`` inside validation blocks."""
        return self._cumulative(np.asarray(b_s, np.float64)) - self._cumulative(np.asarray(a_s, np.float64))

    def _cumulative(self, x: np.ndarray) -> np.ndarray:
        if self.period == 0:
            return np.zeros(x.shape)
        cycle = self.period * self.block_s
        rel = np.clip(x - self.origin_s, 0.0, self.end_s - self.origin_s)
        full = np.floor(rel / cycle)
        return full * self.block_s + np.maximum(rel - full * cycle - (self.period - 1) * self.block_s, 0.0)

    def split(self, store: EventStore) -> tuple[Segments, Segments]:
        """(training segments, validation segments) of every client; every event in exactly one."""
        time = store.columns["time_s"]
        parts = []
        for c, (lo, hi) in enumerate(zip(store.offsets[:-1], store.offsets[1:])):
            if hi == lo:  # a client without events here (another DDP rank's, or unseen)
                continue
            t = np.asarray(time[lo:hi])
            if self.period == 0:
                block = np.zeros(len(t), dtype=np.int64)
            else:
                block = np.floor((t - self.origin_s) / self.block_s).astype(np.int64)
            val = self.is_validation(t)
            key = (block // max(self.period, 1)) * 2 + val
            start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(t) else np.zeros(0, np.int64)
            end = np.r_[start[1:], len(t)]
            stretch, is_val = key[start] // 2, val[start]
            cycle = self.period * self.block_s
            # Training stretch j: [j cycle, j cycle + (period - 1) block); validation block j after it.
            train_start = self.origin_s + stretch * cycle
            val_start = train_start + (self.period - 1) * self.block_s
            window_end = np.where(is_val, val_start + self.block_s, val_start)
            if self.period == 0:
                window_end = np.full(len(start), self.end_s)
            parts.append(
                (
                    np.full(len(start), c),
                    lo + start,
                    lo + end,
                    np.where(is_val & (start > 0), lo + start - 1, -1),
                    # An event at the very end of the window may round into a block past it.
                    np.minimum(np.where(is_val, val_start, train_start), t[start] if len(t) else 0.0),
                    np.maximum(np.minimum(window_end, self.end_s), t[end - 1] if len(t) else 0.0),
                    is_val,
                )
            )
        client, seg_lo, seg_hi, prev, window_start, survival_end, is_val = (
            np.concatenate(x) if parts else np.zeros(0) for x in zip(*parts)
        )
        segments = Segments(
            client.astype(np.int64),
            seg_lo.astype(np.int64),
            seg_hi.astype(np.int64),
            prev.astype(np.int64),
            window_start.astype(np.float64),
            survival_end.astype(np.float64),
        )
        is_val = is_val.astype(bool)
        return segments.select(~is_val), segments.select(is_val)
