"""Row planning and straggler splitting partition each client's natural time exactly."""

import numpy as np

from servegen_ml.neural.data.events import MarkLayout
from servegen_ml.neural.sampling.segment_sampler import _Lanes, _split_stragglers, plan_rows


def _covers(keep, end, lo, hi):
    order = np.argsort(keep)
    keep, end = keep[order], end[order]
    return keep[0] == lo and np.isclose(end[-1], hi) and np.allclose(keep[1:], end[:-1])


def test_rows_partition_each_clients_time_by_expected_events():
    tau = np.linspace(0.0, 100.0, 101)
    expected = np.stack(
        [np.linspace(0, 1000, 101), np.zeros(101), np.r_[np.zeros(50), np.linspace(0, 300, 51)]]
    )
    rows = plan_rows(expected, tau, segment_events=100, warmup_events=10, max_warmup_s=50.0)
    for c, n_rows in ((0, 10), (1, 1), (2, 3)):
        mine = rows.client == c
        assert mine.sum() == n_rows
        assert _covers(rows.tau_keep[mine], rows.tau_end[mine], 0.0, 100.0)
        assert (rows.tau_begin[mine] < rows.tau_keep[mine]).all()
    # client 0: 10 events per unit of tau, so 10 warm-up events take 1 unit
    np.testing.assert_allclose((rows.tau_keep - rows.tau_begin)[rows.client == 0], 1.0)


class _StubTPP:
    def client_rows(self, emb):
        return np.zeros((len(emb), 2), np.float32), np.zeros((len(emb), 6), np.float32)

    layout = MarkLayout()


def test_straggler_split_keeps_the_partition():
    from servegen_ml.neural.sampling.segment_sampler import ClientTable

    clients = ClientTable(np.zeros((2, 3)), np.zeros(2), np.ones(2), np.zeros((2, 1)))
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
    out = _split_stragglers(_StubTPP(), clients, lanes, tail_events=100, warmup_events=8, max_warmup_s=1e9)
    assert len(out.tau) > 2 and (out.client[2:] == 0).all()
    zero = out.client == 0
    assert _covers(np.r_[0.0, out.tau_keep[zero][1:]], out.tau_end[zero], 0.0, 100.0)
    assert out.tau_end[1] == 100.0  # the slow row is left alone
