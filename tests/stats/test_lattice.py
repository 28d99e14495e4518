"""Timestamps stamped in slots: the quantum is found streamed as in one piece, and only where there is one."""

import numpy as np
import pytest

from servegen_ml.stats.lattice import LatticeCounter, on_lattice, timestamp_quantum


def test_timestamp_lattice_is_detected_only_where_there_is_one():
    rng = np.random.default_rng(0)
    slots = np.sort(rng.integers(0, 1200, 3000)) * 3.0
    assert timestamp_quantum(slots + rng.choice([-0.001, 0.0, 0.002], size=3000)) == 3.0
    assert timestamp_quantum(np.sort(rng.uniform(0, 3600, 3000))) == 0.0
    assert timestamp_quantum(np.round(np.sort(rng.uniform(0, 3600, 3000)))) == 1.0
    # Counted from the earliest time: a lattice that does not start at 0 is still one.
    assert timestamp_quantum(slots + 1234.5) == 3.0


@pytest.mark.parametrize("chunk", [1, 7, 500, 10_000])
def test_streamed_quantum_is_the_one_piece_quantum(chunk):
    rng = np.random.default_rng(1)
    for t in (
        np.sort(rng.integers(0, 400, 2000)) * 5.0 + 17.0,
        np.sort(rng.uniform(0, 3600, 2000)),
        np.sort(rng.integers(0, 7200, 2000)) * 0.5,
    ):
        counter = LatticeCounter()
        for i in range(0, len(t), chunk):
            counter.add(t[i : i + chunk])
        assert counter.quantum() == timestamp_quantum(t)


def test_on_lattice_moves_times_down_to_their_slot():
    t = np.array([0.0, 2.9, 3.0, 3.1, 8.99])
    assert on_lattice(t, 3.0).tolist() == [0.0, 0.0, 3.0, 3.0, 6.0]
    assert on_lattice(t, 0.0) is t
