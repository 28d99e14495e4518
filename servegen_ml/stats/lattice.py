"""Timestamps recorded on a lattice: a log that stamps requests in slots (every 3 s, every second).

Such a trace's times are whole multiples of a quantum from its first one, so
its gaps are 0 or whole slots: all requests of a slot share one timestamp. A
generator that draws continuous times spreads each slot's requests apart;
generators that know the quantum place their output on the same lattice
(:mod:`servegen_ml.generators.stream`).
"""

from __future__ import annotations

import numpy as np

from servegen_ml.core.spec import TIME_RESOLUTION_S

# Quanta looked for (s, largest first), and how close (s) a timestamp must lie to the lattice:
# a log that stamps requests in slots puts (nearly) all of them within a few ms of one.
QUANTA_S = tuple(
    q for q in (60.0, 30.0, 15.0, 10.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.1, 0.01) if q > TIME_RESOLUTION_S
)
LATTICE_TOLERANCE_S, LATTICE_SHARE = 0.005, 0.99


class LatticeCounter:
    """:func:`timestamp_quantum` streamed over time-sorted chunks (the first chunk's earliest time is the origin)."""

    def __init__(self) -> None:
        self.origin_s: float | None = None
        self.n = 0
        self.on_lattice = np.zeros(len(QUANTA_S), dtype=np.int64)

    def add(self, timestamps_s: np.ndarray) -> None:
        t = np.asarray(timestamps_s, np.float64)
        if len(t) == 0:
            return
        if self.origin_s is None:
            self.origin_s = float(t.min())
        rel = t - self.origin_s
        for i, q in enumerate(QUANTA_S):
            off = rel - np.round(rel / q) * q
            self.on_lattice[i] += np.count_nonzero(np.abs(off) <= min(LATTICE_TOLERANCE_S, q / 10))
        self.n += len(t)

    def quantum(self) -> float:
        """The largest quantum with LATTICE_SHARE of the timestamps on its lattice, or 0 (none)."""
        if self.n < 2:
            return 0.0
        for q, on in zip(QUANTA_S, self.on_lattice):
            if on >= LATTICE_SHARE * self.n:
                return q
        return 0.0


def timestamp_quantum(timestamps_s: np.ndarray) -> float:
    """The largest quantum q of QUANTA_S with LATTICE_SHARE of the timestamps within min(5 ms, q / 10) of
    a multiple of q (counted from the earliest), or 0 (no lattice)."""
    counter = LatticeCounter()
    counter.add(timestamps_s)
    return counter.quantum()


def on_lattice(t_s: np.ndarray, quantum_s: float) -> np.ndarray:
    """Times moved down to their slot's start (multiples of ``quantum_s`` from 0); 0: unchanged."""
    if quantum_s <= 0:
        return t_s
    return np.floor(np.asarray(t_s, np.float64) / quantum_s) * quantum_s
