"""The generation spec: how much traffic, when, at what rate, from which clients.

Timeline: ``start_s`` is a position in the learned timeline (seconds since the
training trace's start; day ``k`` starts at ``k * 86400``). A spec running past
the learned span wraps by whole weeks when at least a week was learned, else by
whole days when at least a day was learned, else by the learned span itself, so
time of day (and day of week) is preserved (:func:`wrap_time`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
# Gaps are scored as log P(gap in [g, g + resolution)) by every generator (servegen_ml.generators.base).
TIME_RESOLUTION_S = 1e-3


def wrap_period(span_s: float) -> float:
    """The period by which times past the learned span wrap back into it."""
    if span_s >= WEEK_S:
        return WEEK_S
    if span_s >= DAY_S:
        return DAY_S
    return max(float(span_s), 1e-9)


def wrap_time(t_s: np.ndarray | float, span_s: float) -> np.ndarray:
    """Map absolute timeline positions into ``[0, span_s)`` preserving phase.

    Times inside the span are unchanged; later times move back by the fewest
    whole periods (:func:`wrap_period`) that land them inside the span.
    """
    t = np.asarray(t_s, dtype=np.float64)
    period = wrap_period(span_s)
    k = np.ceil(np.maximum(t - span_s, 0.0) / period + (t >= span_s) * 1e-12)
    k = np.where(t >= span_s, np.maximum(k, 1.0), 0.0)
    out = t - k * period
    # Guard against float error at the boundary.
    return np.clip(out, 0.0, np.nextafter(span_s, 0.0))


@dataclass(frozen=True)
class RateSpec:
    """Target aggregate rate.

    kind: ``natural`` (as learned), ``scale`` (learned x ``value``), ``constant``
    (``value`` req/s), or ``curve`` (piecewise-linear in ``curve_t_s`` seconds
    since the spec's start -> ``curve_rate`` req/s, held flat beyond the ends).
    """

    kind: str = "natural"
    value: float = 1.0
    curve_t_s: tuple[float, ...] = ()
    curve_rate: tuple[float, ...] = ()

    @classmethod
    def parse(cls, text: object) -> RateSpec:
        """Parse ``natural``, ``scale:K``, a number, ``curve:T=R,T=R,...`` or a CSV path (``t_s,rate``)."""
        if isinstance(text, RateSpec):
            return text
        if isinstance(text, (int, float)):
            return cls._constant(float(text))
        s = str(text).strip()
        if s in ("", "natural"):
            return cls()
        if s.startswith("scale:"):
            k = _positive_float(s[6:], f"rate={s!r}: scale factor")
            return cls(kind="scale", value=k)
        if s.startswith("curve:"):
            pairs = [p for p in s[6:].split(",") if p.strip()]
            try:
                pts = [tuple(float(x) for x in p.split("=")) for p in pairs]
            except ValueError:
                raise ValueError(f"rate={s!r}: a curve is 'curve:T=R,T=R,...' (seconds=req/s)") from None
            return cls._curve(pts, f"rate={s!r}")
        if s.endswith(".csv"):
            return cls._curve(_read_curve_csv(Path(s)), f"rate file {s}")
        try:
            return cls._constant(float(s))
        except ValueError:
            raise ValueError(
                f"rate={s!r} is not one of: natural, scale:K, a number of req/s, curve:T=R,..., a .csv of t_s,rate"
            ) from None

    @classmethod
    def _constant(cls, r: float) -> RateSpec:
        if not (r > 0 and math.isfinite(r)):
            raise ValueError(f"rate={r}: a constant rate must be a positive number of req/s")
        return cls(kind="constant", value=r)

    @classmethod
    def _curve(cls, pts, where: str) -> RateSpec:
        if not pts or any(len(p) != 2 for p in pts):
            raise ValueError(f"{where}: a curve needs at least one T=R point")
        pts = sorted(pts)
        t, r = zip(*pts)
        if any(not (x >= 0 and math.isfinite(x)) for x in r):
            raise ValueError(f"{where}: curve rates must be finite and >= 0")
        if len(set(t)) != len(t):
            raise ValueError(f"{where}: curve times must be distinct")
        return cls(kind="curve", curve_t_s=tuple(t), curve_rate=tuple(r))

    def target_rate(self, t_rel_s: np.ndarray, natural_rate: np.ndarray) -> np.ndarray:
        """Target aggregate req/s at times ``t_rel_s`` (since spec start), given the natural rate there."""
        natural_rate = np.asarray(natural_rate, dtype=np.float64)
        if self.kind == "natural":
            return natural_rate
        if self.kind == "scale":
            return natural_rate * self.value
        if self.kind == "constant":
            return np.full(np.shape(t_rel_s), self.value)
        return np.interp(t_rel_s, self.curve_t_s, self.curve_rate)

    def multiplier(self, t_rel_s: np.ndarray, natural_rate: np.ndarray) -> np.ndarray:
        """Factor by which every client's learned rate is scaled (burstiness kept).

        Where the natural rate is zero the factor is 0 (there is no traffic to scale).
        """
        natural_rate = np.asarray(natural_rate, dtype=np.float64)
        target = self.target_rate(t_rel_s, natural_rate)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(natural_rate > 0, target / natural_rate, 0.0)

    def to_str(self) -> str:
        if self.kind == "natural":
            return "natural"
        if self.kind == "scale":
            return f"scale:{self.value:g}"
        if self.kind == "constant":
            return f"{self.value:g}"
        return "curve:" + ",".join(f"{t:g}={r:g}" for t, r in zip(self.curve_t_s, self.curve_rate))


def _positive_float(s: str, what: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {s!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{what} must be positive, got {s!r}")
    return v


def _read_curve_csv(path: Path) -> list[tuple[float, float]]:
    if not path.is_file():
        raise FileNotFoundError(f"rate curve file {path} does not exist")
    pts = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"t_s", "rate"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: a rate curve CSV needs the header 't_s,rate'")
        for i, row in enumerate(reader, start=2):
            try:
                pts.append((float(row["t_s"]), float(row["rate"])))
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {i}: t_s and rate must be numbers, got {row}") from None
    return pts


@dataclass(frozen=True)
class ClientSpec:
    """Which clients to generate: ``all`` fitted clients, a ``list`` of ids, or ``new`` (N drawn from the population)."""

    kind: str = "all"
    ids: tuple[str, ...] = ()
    n: int = 0

    @classmethod
    def parse(cls, value: object) -> ClientSpec:
        if isinstance(value, ClientSpec):
            return value
        if isinstance(value, (list, tuple)):
            ids = tuple(str(v) for v in value)
            if not ids:
                raise ValueError("clients=[]: name at least one client id")
            return cls(kind="list", ids=ids)
        s = str(value).strip()
        if s in ("", "all"):
            return cls()
        if s.startswith("new:"):
            try:
                n = int(s[4:])
            except ValueError:
                n = 0
            if n <= 0:
                raise ValueError(f"clients={s!r}: use new:N with N a positive integer")
            return cls(kind="new", n=n)
        ids = tuple(x.strip() for x in s.strip("[]").split(",") if x.strip())
        return cls(kind="list", ids=ids)

    def to_str(self) -> str:
        if self.kind == "all":
            return "all"
        if self.kind == "new":
            return f"new:{self.n}"
        return ",".join(self.ids)


UPSAMPLE_MODES = ("conversations", "compress")


@dataclass(frozen=True)
class GenerationSpec:
    """What to generate. Output timestamps run from 0 to ``duration_s`` (seconds since the spec's start)."""

    duration_s: float
    start_s: float = 0.0
    rate: RateSpec = field(default_factory=RateSpec)
    clients: ClientSpec = field(default_factory=ClientSpec)
    upsample: str = "conversations"
    seed: int = 0

    def __post_init__(self):
        if not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise ValueError(f"duration_s={self.duration_s}: must be a positive number of seconds")
        if not (self.start_s >= 0 and math.isfinite(self.start_s)):
            raise ValueError(f"start_s={self.start_s}: must be >= 0 seconds")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample={self.upsample!r}: choose one of {UPSAMPLE_MODES}")

    @classmethod
    def from_values(
        cls,
        duration_s,
        start_s=0.0,
        rate="natural",
        clients="all",
        upsample="conversations",
        seed=0,
    ) -> GenerationSpec:
        """Build a spec from CLI/config values (strings or numbers)."""
        return cls(
            duration_s=float(duration_s),
            start_s=float(start_s),
            rate=RateSpec.parse(rate),
            clients=ClientSpec.parse(clients),
            upsample=str(upsample),
            seed=int(seed),
        )

    def to_dict(self) -> dict:
        return {
            "duration_s": self.duration_s,
            "start_s": self.start_s,
            "rate": self.rate.to_str(),
            "clients": self.clients.to_str(),
            "upsample": self.upsample,
            "seed": self.seed,
        }
