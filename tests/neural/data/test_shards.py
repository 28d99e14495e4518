"""DDP rank shards of the event store: disjoint clients, the whole trace together, statistics summed
over shards equal the whole store's, plans padded and interleaved the same on every rank."""

import itertools
import threading

import numpy as np
import pytest

from servegen_ml.neural.data.chunks import Segments, gather_batch, plan_lanes
from servegen_ml.neural.data.client_marks import fit_client_marks
from servegen_ml.neural.data.datamodule import interleave, to_tensors
from servegen_ml.neural.data.events import StoreSource, shard_owner
from servegen_ml.neural.data.normalizers import fit_normalizers, rate_curves
from servegen_ml.neural.data.validation import ValidationBlocks
from servegen_ml.neural.model.tpp import MarkedTPP
from servegen_ml.neural.rate_level import fit_rate_level, unit_clock
from servegen_ml.neural.training.lightning_module import TPPLightningModule
from tests.factories import synthetic_trace
from tests.neural.test_tpp import tpp_kwargs


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace(seed=5, duration_s=3600.0, n_clients=7, multimodal=True, reasoning=True)


def _source(trace, rows=301):
    return StoreSource(lambda: (trace.iloc[i : i + rows] for i in range(0, len(trace), rows)))


def test_shard_owner_balances_events_deterministically():
    counts = np.array([100, 1, 50, 50, 2, 0, 30])
    owner = shard_owner(counts, 2)
    np.testing.assert_array_equal(owner, shard_owner(counts, 2))
    load = np.bincount(owner, weights=counts, minlength=2)
    assert abs(load[0] - load[1]) <= counts.max() and set(owner) == {0, 1}
    assert (shard_owner(counts, 1) == 0).all()


def test_shards_hold_disjoint_clients_and_together_the_whole_store(trace):
    source = _source(trace)
    whole = source.build()
    shards = [source.build(rank, 3) for rank in range(3)]
    assert all(s.client_ids == whole.client_ids for s in shards)  # one client index everywhere
    counts = np.stack([s.counts for s in shards])
    np.testing.assert_array_equal(counts.sum(0), whole.counts)
    assert ((counts > 0).sum(0) == 1).all()  # each client's events on exactly one rank
    assert all(0 < s.n_events < whole.n_events for s in shards)
    for s in shards:
        for c in np.flatnonzero(s.counts):
            a, b = slice(s.offsets[c], s.offsets[c + 1]), slice(whole.offsets[c], whole.offsets[c + 1])
            for name, col in whole.columns.items():
                np.testing.assert_array_equal(s.columns[name][a], col[b], err_msg=name)
            offsets, tokens = s.items["image"]
            w_offsets, w_tokens = whole.items["image"]
            np.testing.assert_array_equal(
                tokens[offsets[a.start] : offsets[a.stop]], w_tokens[w_offsets[b.start] : w_offsets[b.stop]]
            )


def _all_reduce_by_threads(world: int):
    """``reduce(x, op)`` for each rank that exchanges arrays between threads, like torch.distributed."""
    barrier, slots = threading.Barrier(world), {}

    def for_rank(rank):
        calls = itertools.count()

        def reduce(x, op):
            k = next(calls)
            slots[k, rank] = np.array(x, copy=True)
            barrier.wait()
            parts = [slots[k, r] for r in range(world)]
            barrier.wait()
            return np.sum(parts, axis=0) if op == "sum" else np.max(parts, axis=0)

        return reduce

    return for_rank


def test_statistics_summed_over_shards_equal_the_whole_stores(trace):
    source = _source(trace)
    whole = source.build()
    span, bin_s = whole.window_end_s, 600.0
    blocks = ValidationBlocks.for_window(whole.window_start_s, whole.window_end_s, 0.2)
    clock = unit_clock(fit_rate_level(rate_curves(whole, bin_s, span, blocks), bin_s, span), bin_s, span)
    want = fit_normalizers(whole, clock, blocks, 8, 0.01)
    reducers, got = _all_reduce_by_threads(2), {}

    def run(rank):
        got[rank] = fit_normalizers(source.build(rank, 2), clock, blocks, 8, 0.01, reduce=reducers(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for norm in got.values():
        np.testing.assert_allclose(norm.gap_log_mean, want.gap_log_mean, rtol=1e-6)
        np.testing.assert_allclose(norm.gap_log_std, want.gap_log_std, rtol=1e-6)
        np.testing.assert_array_equal(norm.train_events, want.train_events)
        assert norm.spikes == want.spikes and norm.max_count == want.max_count
        for f in want.mark_mean:
            assert norm.mark_mean[f] == pytest.approx(want.mark_mean[f], rel=1e-12)
            assert norm.mark_std[f] == pytest.approx(want.mark_std[f], rel=1e-9)
    # Client marginals: each client's rows come from its own shard, zeros elsewhere.
    marks = [fit_client_marks(source.build(r, 2), want, blocks) for r in range(2)]
    for name, m in fit_client_marks(whole, want, blocks).heads.items():
        np.testing.assert_array_equal(sum(x.heads[name].categories for x in marks), m.categories)
        np.testing.assert_array_equal(sum(x.heads[name].continuous for x in marks), m.continuous)
    # Rate curves: each client's row comes from its own shard, zeros elsewhere.
    curves = sum(rate_curves(source.build(r, 2), bin_s, span, blocks) for r in range(2))
    np.testing.assert_array_equal(curves, rate_curves(whole, bin_s, span, blocks))


def test_padded_plans_take_empty_steps_and_groups_interleave_evenly():
    seg = Segments(*(np.array(v) for v in ([0, 1], [0, 10], [10, 15], [-1, -1], [0.0, 0.0], [np.nan, 20.0])))
    plan = plan_lanes(seg, 2, 4, None)
    padded = plan.padded(plan.n_steps + 3)
    assert padded.n_steps == plan.n_steps + 3
    assert (padded.length[:, plan.n_steps :] == 0).all() and padded.reset[:, plan.n_steps :].all()
    np.testing.assert_array_equal(padded.length[:, : plan.n_steps], plan.length)
    order = interleave(np.array([4, 2]))
    assert order.tolist() == [0, 1, 0, 0, 1, 0]


def test_an_empty_padding_step_has_zero_loss_and_zero_gradient():
    source = _source(synthetic_trace(seed=5, duration_s=900.0, n_clients=3, reasoning=True))
    store = source.build()
    clock = unit_clock(fit_rate_level(rate_curves(store, 300.0, 900.0), 300.0, 900.0), 300.0, 900.0)
    norm = fit_normalizers(store, clock)
    module = TPPLightningModule(
        lambda: MarkedTPP(**tpp_kwargs(store, norm), hidden=8, embedding=4, head_hidden=8)
    )
    module.configure_model()
    module.tpp.set_normalizers(norm)
    seg = Segments(*(np.array(v) for v in ([0], [0], [5], [-1], [0.0], [np.nan])))
    empty = plan_lanes(seg, 3, 8, None).padded(2)
    batch = to_tensors({**gather_batch(store, empty, 1, 8), "lane_group": np.array(0)})
    loss, n = module._nll(batch, "train")
    loss.backward()
    assert n == 0 and float(loss) == 0.0
    assert all(p.grad is None or not p.grad.any() for p in module.parameters())
