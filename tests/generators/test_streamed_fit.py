"""Streamed fits (``fit_chunks``, ``PoolFitter``): the pool equals the in-memory fit of the whole trace."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from servegen_ml.compose import interarrival as ia
from servegen_ml.conversations.empirical import conversation_roles
from servegen_ml.conversations.fit import ConversationFitter, fit_conversations
from servegen_ml.core.config import compose
from servegen_ml.core.errors import UserError
from servegen_ml.generators.naive import NaiveGenerator
from servegen_ml.generators.parametric import ParametricGenerator
from servegen_ml.generators.training import fit_from_config
from servegen_ml.pool import ClientPool
from servegen_ml.pool import empirical as pool_empirical
from servegen_ml.pool import fit as pool_fit
from servegen_ml.pool.fit import PoolFitter, fit_client_pool
from servegen_ml.trace.io import write_trace
from tests.factories import conversational_trace, synthetic_trace


def _chunks(trace: pd.DataFrame, rows: int):
    return (trace.iloc[i : i + rows] for i in range(0, len(trace), rows))


def _assert_same_pool(a: ClientPool, b: ClientPool, exact: bool = True) -> None:
    for table in ("rates", "pmfs"):
        pd.testing.assert_frame_equal(getattr(a, table), getattr(b, table), check_exact=exact, rtol=1e-10)
    for name in (
        "clients",
        "rate_window_s",
        "data_window_s",
        "span_s",
        "origin_s",
        "population_rate",
        "notes",
    ):
        assert getattr(a, name) == getattr(b, name), name


def _trace() -> pd.DataFrame:
    trace = synthetic_trace(seed=3, duration_s=8_000, n_clients=6, multimodal=True, reasoning=True)
    # Simultaneous requests across a chunk boundary and exactly on a window edge.
    t = trace["timestamp"].to_numpy().copy()
    t[100:104] = t[100]
    t[500] = t[499] = 1200.0
    trace["timestamp"] = np.sort(t)
    return trace


@pytest.mark.parametrize("rows", [101, 997, 5_000])
def test_chunked_pool_equals_whole_trace_fit(rows, monkeypatch):
    monkeypatch.setattr(pool_empirical, "MERGE_MIN_ROWS", 50)  # count tables merge many times along the way
    trace = _trace()
    whole = fit_client_pool(trace, 600, 3_600, 20)
    fitter = PoolFitter(600, 3_600, 20)
    for chunk in _chunks(trace, rows):
        fitter.add(chunk)
    _assert_same_pool(whole, fitter.finish())


def test_spilled_client_gaps_agree_up_to_rounding(monkeypatch):
    trace = _trace()
    whole = fit_client_pool(trace, 600, 3_600, 20)
    monkeypatch.setattr(pool_fit, "GAPS_IN_MEMORY", 700)
    fitter = PoolFitter(600, 3_600, 20)
    for chunk in _chunks(trace, 333):
        fitter.add(chunk)
    assert fitter._client_gaps._on_disk > 0  # the file path was taken
    _assert_same_pool(whole, fitter.finish(), exact=False)


def test_block_fits_agree_with_one_block():
    rng = np.random.default_rng(1)
    group = rng.integers(0, 30, 20_000)
    gaps = rng.weibull(0.6, 20_000) * rng.random(30)[group]
    one = np.array(ia.fit_renewal(gaps, group, 32))
    blocks = np.array(
        ia.fit_renewal_blocks(lambda: [(gaps[:7_000], group[:7_000]), (gaps[7_000:], group[7_000:])], 32)
    )
    np.testing.assert_allclose(blocks, one, rtol=1e-10, equal_nan=True)


def test_rows_going_back_in_time_are_refused_with_the_row():
    trace = synthetic_trace(seed=0, duration_s=600)
    fitter = PoolFitter(source="t.parquet")
    fitter.add(trace.iloc[100:200])
    with pytest.raises(UserError, match=r"t.parquet, row 101: earlier than the row before"):
        fitter.add(trace.iloc[:100])


def test_naive_and_parametric_fit_chunks_equal_fit():
    trace = _trace()
    for make in (lambda: ParametricGenerator(data_window_s=3_600), lambda: NaiveGenerator("gamma")):
        whole, streamed = make().fit(trace), make().fit_chunks(_chunks(trace, 777))
        _assert_same_pool(whole.pool_, streamed.pool_, exact=False)
        if isinstance(whole, NaiveGenerator):
            pd.testing.assert_frame_equal(whole.shares_, streamed.shares_)


def test_train_streams_the_file_and_matches_the_in_memory_fit(tmp_path):
    trace = _trace()
    write_trace(trace, tmp_path / "t.parquet")
    cfg = compose(
        "train",
        [f"data.path={tmp_path / 't.parquet'}", f"out={tmp_path / 'ckpt'}", "chunk_rows=999", "quiet=true"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the in-memory read
        metrics = fit_from_config(cfg)
    assert metrics["train_events"] == len(trace)
    (tmp_path / "memory").mkdir()
    ParametricGenerator().fit(trace).pool_.write_into(tmp_path / "memory")
    _assert_same_pool(ClientPool.load(tmp_path / "ckpt"), ClientPool.load(tmp_path / "memory"))


def _assert_same_conversations(a, b) -> None:
    for name in ("values_", "hazard_counts_", "summary_"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=False, rtol=1e-10)
    np.testing.assert_array_equal(a.output_edges_, b.output_edges_)
    assert a.burn_in_s_ == b.burn_in_s_ and a.clients_ == b.clients_


@pytest.mark.parametrize("rows", [97, 1_000, 10_000])
def test_train_streams_conversations_and_matches_the_in_memory_fit(rows, tmp_path, monkeypatch):
    from servegen_ml.conversations import fit as conversation_fit

    monkeypatch.setattr(conversation_fit, "RECORDS_IN_MEMORY", 500)  # records go through the files too
    trace = conversational_trace(seed=3)
    solo = trace.index[::29]  # conversations of one turn
    trace.loc[solo, "conversation_id"] = [f"solo-{i}" for i in range(len(solo))]
    write_trace(trace, tmp_path / "t.parquet")
    args = [
        f"data.path={tmp_path / 't.parquet'}",
        f"out={tmp_path / 'ckpt'}",
        f"chunk_rows={rows}",
        "quiet=true",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # streamed: no fallback to the in-memory read
        metrics = fit_from_config(compose("train", args))
    assert metrics["train_events"] == len(trace)
    streamed = ParametricGenerator.load(tmp_path / "ckpt")
    ParametricGenerator().fit(trace).save(tmp_path / "memory")
    whole = ParametricGenerator.load(tmp_path / "memory")
    _assert_same_pool(streamed.pool_, whole.pool_)
    _assert_same_conversations(streamed.conversations_, whole.conversations_)


def test_streamed_conversations_equal_the_chaining_of_conversation_roles():
    trace = conversational_trace(seed=5)
    openers, model = fit_conversations(trace)
    roles = conversation_roles(trace)
    pd.testing.assert_frame_equal(openers, trace[roles.is_opener].reset_index(drop=True))
    summary = model.summary_.set_index("client_id")
    assert summary.loc["*", "follow_ups"] == (~roles.is_opener).sum()
    assert summary.loc["*", "conversations"] == roles.is_opener.sum()
    hazards = model.hazard_counts_
    assert hazards.loc[hazards["client"] == len(model.clients_), "reached"].sum() == len(trace)


def test_a_conversation_silent_past_idle_s_restarts():
    trace = conversational_trace(seed=5).iloc[:200].copy()
    fitter = ConversationFitter(idle_s=1.0)
    opener = fitter.add(trace)
    gap = trace.groupby("conversation_id")["timestamp"].diff().to_numpy()
    # Every row opens a conversation unless it follows its predecessor within a second.
    np.testing.assert_array_equal(opener, ~(gap <= 1.0))
    # Open conversations stay bounded by the idle rule, not by the rows.
    assert len(fitter._open.keys) <= (trace["timestamp"] > trace["timestamp"].iloc[-1] - 1.0).sum()


def test_naive_streams_conversations_too():
    trace = conversational_trace(seed=3)
    whole = NaiveGenerator().fit(trace)
    streamed = NaiveGenerator().fit_chunks(_chunks(trace, 333))
    _assert_same_pool(whole.pool_, streamed.pool_)
    _assert_same_conversations(whole.conversations_, streamed.conversations_)
    assert whole.conversations_.clients_ == ("all",)


def test_client_without_two_requests_in_one_window_is_poisson_not_nan():
    # 30 requests of client "sparse", each in its own rate window: no gap to fit.
    trace = synthetic_trace(seed=4, duration_s=30 * 600)
    lone = pd.DataFrame(
        {
            "timestamp": np.arange(30) * 600.0 + 1.0,
            "client_id": pd.array(["sparse"] * 30, dtype="string[pyarrow]"),
            "input_tokens": np.full(30, 100),
            "output_tokens": np.full(30, 10),
        }
    )
    trace = pd.concat([trace, lone]).sort_values("timestamp", kind="stable").reset_index(drop=True)
    rates = fit_client_pool(trace, 600, 3_600, 20).rates
    sparse = rates[rates["client_id"] == "sparse"]
    assert len(sparse) == 30 and np.isfinite(rates[["shape", "scale", "cv"]].to_numpy()).all()
    assert (sparse["family"] == "Gamma").all() and (sparse["shape"] == 1.0).all()


def test_conversation_checkpoint_with_a_client_without_follow_ups_loads(tmp_path):
    from servegen_ml.generators.base import load_generator

    trace = synthetic_trace(seed=6, duration_s=3_600)
    ids = np.array([f"c{i // 2}" for i in range(len(trace))], dtype=object)
    ids[trace["client_id"].to_numpy() == "c3"] = [
        f"solo{i}" for i in range((trace["client_id"] == "c3").sum())
    ]
    trace["conversation_id"] = pd.array(ids, dtype="string[pyarrow]")
    gen = ParametricGenerator().fit(trace)
    assert gen.conversations_ is not None
    gen.save(tmp_path / "ckpt")
    assert load_generator(tmp_path / "ckpt").conversations_ is not None


def test_conversation_tables_past_the_cap_are_binned_whatever_the_chunking(monkeypatch):
    from servegen_ml.conversations import fit as conversation_fit
    from servegen_ml.pool import bins

    monkeypatch.setattr(bins, "VALUE_CAP", 60)
    trace = conversational_trace(seed=3)
    _, whole = fit_conversations(trace)
    monkeypatch.setattr(conversation_fit, "RECORDS_IN_MEMORY", 300)  # several blocks, binned as they come
    fitter = ConversationFitter()
    for chunk in _chunks(trace, 250):
        fitter.add(chunk)
    streamed = fitter.finish()
    _assert_same_conversations(whole, streamed)
    gaps = whole.values_[whole.values_["table"] == "gap_ms"]
    assert (gaps["width"] > 1).any()
    assert gaps.groupby(["client", "bucket"]).size().max() <= bins.EXACT_BELOW + 25 * bins.BINS_PER_OCTAVE
    # The gap survival stays a survival function across bins, and sampled gaps fill the bins.
    x = np.linspace(0.0, 600.0, 400)
    sf = np.exp(whole.log_sf_gap(np.zeros(len(x), dtype=np.int64), np.full(len(x), 200), x))
    assert sf[0] == pytest.approx(1.0) and (np.diff(sf) <= 1e-12).all() and sf[-1] < 0.2
    drawn = whole.sample_gap_s(np.zeros(5_000, dtype=np.int64), np.full(5_000, 200), np.random.default_rng(0))
    steps = np.floor(drawn / 1e-3)
    assert (~np.isin(steps[steps >= bins.EXACT_BELOW], bins._EDGES)).mean() > 0.9


def test_conversation_tables_stay_within_their_budget_whatever_the_chunking(monkeypatch):
    from servegen_ml.conversations import fit as conversation_fit

    monkeypatch.setattr(conversation_fit, "RECORDS_IN_MEMORY", 300)
    trace = conversational_trace(seed=3)
    exact = ConversationFitter()
    for chunk in _chunks(trace, 250):
        exact.add(chunk)
    exact = exact.finish()
    exact_gaps = exact.values_[exact.values_["table"] == "gap_ms"]
    own_exact = exact_gaps[(exact_gaps["client"] < len(exact.clients_)) & (exact_gaps["bucket"] >= 0)]
    budget = len(own_exact) // 2
    monkeypatch.setattr(conversation_fit, "CELL_BUDGET", budget)
    models = []
    for rows in (97, 250, 1_000):
        fitter = ConversationFitter()
        for chunk in _chunks(trace, rows):
            fitter.add(chunk)
        models.append(fitter.finish())
    _assert_same_conversations(models[0], models[1])
    _assert_same_conversations(models[0], models[2])
    gaps = models[0].values_[models[0].values_["table"] == "gap_ms"]
    assert "width" not in exact_gaps and (gaps["width"] > 1).any()
    # The table of every client's own gaps (bucket by bucket) is held to the budget.
    own = gaps[(gaps["client"] < len(models[0].clients_)) & (gaps["bucket"] >= 0)]
    assert len(own) <= budget
