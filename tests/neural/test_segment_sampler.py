"""Row planning and straggler splitting partition each client's unit time exactly; the time map inverts it."""

import numpy as np

from servegen_ml.neural.data.events import MarkLayout
from servegen_ml.neural.sampling.segment_sampler import (
    MAX_WARMUP_S,
    TimeMap,
    _Lanes,
    _split_stragglers,
    plan_rows,
)


def _covers(keep, end, lo, hi):
    order = np.argsort(keep)
    keep, end = keep[order], end[order]
    return keep[0] == lo and np.isclose(end[-1], hi) and np.allclose(keep[1:], end[:-1])


def test_rows_partition_each_clients_unit_time():
    rows = plan_rows(np.array([1000.0, 0.0, 300.0]), segment_events=100, warmup_events=10)
    for c, n_rows, total in ((0, 10, 1000.0), (1, 1, 0.0), (2, 3, 300.0)):
        mine = rows.client == c
        assert mine.sum() == n_rows
        assert _covers(rows.tau_keep[mine], rows.tau_end[mine], 0.0, total)
    np.testing.assert_allclose(rows.tau_keep - rows.tau_begin, 10.0)


def test_the_time_map_inverts_each_clients_unit_time():
    t = np.linspace(0.0, 10.0, 11)
    rate = np.array([[2.0] * 5 + [0.5] * 5, [0.0] * 3 + [1.0] * 7])  # client 1 idle at first
    unit = np.concatenate([np.zeros((2, 1)), np.cumsum(rate, axis=1)], axis=1)
    tm = TimeMap(unit, t, np.array([2.0, 1e-9]), 0.0)
    np.testing.assert_allclose(
        tm.to_spec_time(np.array([0, 0, 0, 1, 1]), np.array([1.0, 10.0, 11.0, 0.5, 7.0])),
        [0.5, 5.0, 7.0, 3.5, 10.0],
    )
    # Before the start: the start rate, bounded.
    np.testing.assert_allclose(
        tm.to_spec_time(np.array([0, 1]), np.array([-4.0, -1.0])), [-2.0, -MAX_WARMUP_S]
    )


class _StubTPP:
    def client_rows(self, emb):
        return np.zeros((len(emb), 2), np.float32), np.zeros((len(emb), 6), np.float32)

    layout = MarkLayout()


def test_straggler_split_keeps_the_partition():
    from servegen_ml.neural.sampling.segment_sampler import ClientTable

    clients = ClientTable(
        np.zeros((2, 3)), np.zeros(2), np.ones(2), np.zeros((2, 1)), np.ones((2, 1)), np.zeros((2, 4))
    )
    lanes = _Lanes.start(
        _StubTPP(),
        clients,
        np.array([0, 1]),
        np.array([-5.0, -5.0]),
        np.zeros(2),
        np.array([100.0, 100.0]),
        8,
    )
    lanes.tau = np.array([20.0, 50.0])
    lanes.recent_gap = np.array([0.01, 100.0])  # row 0 in a burst, row 1 slow
    out = _split_stragglers(_StubTPP(), clients, lanes, tail_events=100, warmup_events=8)
    assert len(out.tau) > 2 and (out.client[2:] == 0).all()
    zero = out.client == 0
    assert _covers(np.r_[0.0, out.tau_keep[zero][1:]], out.tau_end[zero], 0.0, 100.0)
    assert out.tau_end[1] == 100.0  # the slow row is left alone
