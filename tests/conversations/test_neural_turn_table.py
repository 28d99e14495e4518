"""The neural conversation heads' turn table, chained in a stream: the same turns as the whole-frame roles."""

import numpy as np
import pandas as pd
import pytest

from servegen_ml.conversations.empirical import MAX_BURN_IN_S, conversation_roles
from servegen_ml.conversations.last_turns import mark_last_turns
from servegen_ml.conversations.neural.table import TurnTableBuilder, build_turn_table
from servegen_ml.neural.data.events import UnsortedChunksError
from tests.factories import conversational_trace


def _chunks(frame: pd.DataFrame, rows: int):
    return lambda: (frame.iloc[i : i + rows].reset_index(drop=True) for i in range(0, len(frame), rows))


@pytest.mark.parametrize("rows", [1, 97, 100_000])
@pytest.mark.parametrize("on_disk", [False, True])
def test_streamed_turns_chain_like_the_whole_frame(rows, on_disk, tmp_path):
    trace = conversational_trace(seed=0, duration_s=1800.0)
    ids = trace["conversation_id"].astype(object).copy()
    ids.iloc[[3, 40]] = ""  # an empty id is no id, like a missing one
    ids.iloc[41] = None
    trace["conversation_id"] = ids
    chunks = _chunks(trace, rows)
    table = build_turn_table(chunks, mark_last_turns(chunks()), tmp_path / "turns" if on_disk else None)
    roles = conversation_roles(trace)
    turn, nxt = np.asarray(table.turn), np.asarray(table.next)
    labels = np.asarray(table.labels, dtype=object)[turn["client"]]
    client = trace["client_id"].astype(str).to_numpy(dtype=object)
    np.testing.assert_array_equal(labels, client[roles.opener_row])  # a conversation is its opener's client's
    np.testing.assert_array_equal(turn["position"], roles.position)
    t = trace["timestamp"].to_numpy(np.float64)
    np.testing.assert_array_equal(turn["opener_timestamp"], t[roles.opener_row])
    follow = np.flatnonzero(~roles.is_opener)
    prev = roles.predecessor[follow]
    next_t = np.full(len(t), np.nan)
    next_t[prev] = t[follow]
    np.testing.assert_array_equal(nxt["timestamp"], next_t)
    inp, out = trace["input_tokens"].to_numpy(), trace["output_tokens"].to_numpy()
    np.testing.assert_array_equal(nxt["input_tokens"][prev], inp[follow])
    np.testing.assert_array_equal(nxt["output_tokens"][prev], out[follow])
    np.testing.assert_array_equal(nxt["new_tokens"][prev], np.maximum(inp[follow] - inp[prev] - out[prev], 0))
    assert table.follow_ups == len(follow) > 0 and table.rows == len(trace)
    np.testing.assert_array_equal(table.opener_mask(0, len(trace)), roles.is_opener)


def test_open_conversations_are_only_those_with_a_later_turn():
    # Ten conversations one after the other: once a conversation's last turn has passed it is not held.
    frame = pd.DataFrame(
        {
            "timestamp": np.arange(40.0),
            "client_id": "c",
            "conversation_id": np.repeat([f"x{i}" for i in range(10)], 4),
            "input_tokens": 100,
            "output_tokens": 10,
        }
    )
    chunks = _chunks(frame, 4)
    builder = TurnTableBuilder(mark_last_turns(chunks()))
    for chunk in chunks():
        builder.add(chunk)
        assert len(builder._open.keys) == 0
    builder = TurnTableBuilder(mark_last_turns(_chunks(frame, 3)()))
    held = []
    for chunk in _chunks(frame, 3)():
        builder.add(chunk)
        held.append(len(builder._open.keys))
    assert max(held) == 1


def test_rows_going_back_in_time_are_refused():
    frame = conversational_trace(seed=0, duration_s=600.0)
    chunks = [frame.iloc[50:100], frame.iloc[:50]]
    with pytest.raises(UnsortedChunksError, match="back in time"):
        build_turn_table(lambda: iter(chunks), mark_last_turns(iter(chunks)))


@pytest.mark.parametrize("n", [384, 398])  # a whole number of batches, and a partial last one
@pytest.mark.parametrize("exhaust", [False, True])  # stop at len() (as Lightning does), or run out
def test_the_heads_shuffle_draws_like_a_shuffled_dataloader(n, exhaust):
    import torch
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    from servegen_ml.conversations.neural.fit import _EpochShuffle, _whole_batch

    class Rows(Dataset):
        def __len__(self):
            return n

        def __getitems__(self, index):
            return torch.as_tensor(np.asarray(index, np.int64))

    def epochs(loader, unpack):
        out = []
        for _ in range(3):
            it = iter(loader)
            out.append([unpack(next(it)) for _ in range(len(loader))])
            if exhaust:
                assert next(it, None) is None
        return out

    g_old, g_new = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    old = DataLoader(TensorDataset(torch.arange(n)), batch_size=128, shuffle=True, generator=g_old)
    new = DataLoader(
        Rows(), batch_sampler=_EpochShuffle(n, 128, g_new), generator=g_new, collate_fn=_whole_batch
    )
    for a, b in zip(epochs(old, lambda batch: batch[0]), epochs(new, lambda batch: batch), strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    assert torch.equal(g_old.get_state(), g_new.get_state())


def test_past_one_window_the_heads_shuffle_holds_a_window_not_the_whole_order():
    # Chunks of 50 rows, 3 shuffled together: every row once an epoch, full batches but the last,
    # each batch drawn from a few chunks (a whole-order shuffle would spread 64 rows over ~20),
    # the same batches for the same seed and a new order each epoch.
    import torch

    from servegen_ml.conversations.neural.fit import _EpochShuffle

    def epochs(seed, count=2):
        sampler = _EpochShuffle(1000, 64, torch.Generator().manual_seed(seed), chunk=50, window=3)
        return [list(sampler) for _ in range(count)], len(sampler)

    (first, second), length = epochs(7)
    for batches in (first, second):
        assert len(batches) == length == 16
        assert [len(b) for b in batches] == [64] * 15 + [1000 - 15 * 64]
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(1000))
    assert len(np.unique(first[0] // 50)) <= 3
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))
    again, _ = epochs(7)
    assert all(np.array_equal(a, b) for a, b in zip(first, again[0]))


def test_the_heads_default_batch_grows_with_the_turns_to_bound_an_epochs_batches():
    from servegen_ml.conversations.neural.fit import BATCH_MAX, EPOCH_BATCHES, default_batch

    assert default_batch(0) == default_batch(EPOCH_BATCHES * 128) == 128
    assert default_batch(EPOCH_BATCHES * 128 + 1) == 256
    for turns in (10**6, 9 * 10**6, 3 * 10**7):
        batch = default_batch(turns)
        assert -(-turns // batch) <= EPOCH_BATCHES and -(-turns // (batch // 2)) > EPOCH_BATCHES
    assert default_batch(9 * 10**7) == default_batch(10**12) == BATCH_MAX  # then epochs grow again


def test_turn_normalizers_in_blocks_agree_with_one_block(monkeypatch):
    from servegen_ml.conversations.neural import fit
    from servegen_ml.conversations.neural import table as table_module

    trace = conversational_trace(seed=2, duration_s=3600.0)
    chunks = _chunks(trace, 500)
    table = build_turn_table(chunks, mark_last_turns(chunks()))
    split_s = 0.8 * float(trace["timestamp"].max())
    n_train = fit.training_rows(table, 0.0, split_s)
    whole = fit.fit_turn_normalizers(table, 0.0, n_train, split_s, 3600.0, (0, 0))
    monkeypatch.setattr(table_module, "BLOCK_ROWS", 37)
    assert fit.training_rows(table, 0.0, split_s) == n_train
    blocked = fit.fit_turn_normalizers(table, 0.0, n_train, split_s, 3600.0, (0, 0))
    assert blocked.keys() == whole.keys()
    for k, v in whole.items():
        np.testing.assert_allclose(blocked[k], v, rtol=1e-12, err_msg=k)
    # The burn-in (an order statistic of the follow-ups' opener-to-turn times) is exact in any blocks.
    roles = conversation_roles(trace)
    t = trace["timestamp"].to_numpy(np.float64)
    follow = ~roles.is_opener
    want = min(np.quantile(t[follow] - t[roles.opener_row[follow]], 0.99), MAX_BURN_IN_S)
    monkeypatch.setattr(table_module, "BLOCK_ROWS", 1)
    assert fit._burn_in_s(table, 0.0) == want > 0


def test_simulated_openers_come_in_batches_of_the_same_rows():
    from servegen_ml.conversations.neural.fit import _openers_at

    trace = conversational_trace(seed=1, duration_s=1800.0)
    chunks = _chunks(trace, 1000)
    table = build_turn_table(chunks, mark_last_turns(chunks()))
    code = np.arange(len(table.labels))
    counts = np.bincount(np.asarray(table.turn)["client"][np.asarray(table.turn)["position"] == 1])
    picked = [np.random.default_rng(c).permutation(n)[: max(1, n // 2)] for c, n in enumerate(counts)]
    whole = pd.concat(list(_openers_at(table, code, picked, 5.0, 10**9)), ignore_index=True)
    assert len(whole) == sum(len(k) for k in picked)
    # Each client's picked openers, in arrival order: its k-th opener for each picked rank k.
    opener = trace.iloc[np.flatnonzero(conversation_roles(trace).is_opener)]
    for c, label in enumerate(table.labels):
        mine = opener[opener["client_id"].astype(str) == label]
        want = np.sort(mine["timestamp"].to_numpy()[np.sort(picked[c])]) - 5.0
        np.testing.assert_array_equal(whole.loc[whole["client_id"] == label, "timestamp"], want)
    parts = list(_openers_at(table, code, picked, 5.0, 7))
    assert all(len(p) == 7 for p in parts[:-1]) and 0 < len(parts[-1]) <= 7
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), whole)
