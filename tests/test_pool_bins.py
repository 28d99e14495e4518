"""Bounded value tables (servegen_ml.pool.bins): exact under the cap, binned past it, chunking-free."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.parametric import ParametricGenerator
from servegen_ml.pool import bins
from servegen_ml.pool.fit import PoolFitter, fit_client_pool
from servegen_ml.pool.sampling import sample_pool
from servegen_ml.pool.table import BIN_WIDTH, ClientPool
from tests.factories import make_trace, synthetic_trace


def _wide_trace(n: int = 40_000, seed: int = 0) -> pd.DataFrame:
    """Two clients whose input lengths take thousands of distinct values (log-normal, log-sd 1)."""
    rng = np.random.default_rng(seed)
    return make_trace(
        {
            "timestamp": np.sort(rng.uniform(0, 7_200, n)),
            "client_id": np.where(rng.random(n) < 0.7, "big", "small"),
            "input_tokens": np.round(np.exp(rng.normal(8.0, 1.0, n))).astype(np.int64),
            "output_tokens": rng.integers(1, 300, n),
        }
    )


def _table(pool: ClientPool, client: str, field: str, window: float = -1.0) -> pd.DataFrame:
    p = pool.pmfs
    rows = (p["client_id"] == client) & (p["field"] == field) & (p["window_start_s"] == window)
    return p[rows]


def _binned_cdf(table: pd.DataFrame, x: np.ndarray) -> np.ndarray:
    """P(V <= x) of a pmfs table whose entries spread uniformly over their bins."""
    lo = table["value"].to_numpy()
    width = table[BIN_WIDTH].to_numpy() if BIN_WIDTH in table else np.ones(len(lo))
    prob = table["prob"].to_numpy()
    covered = np.clip((x[:, None] - lo[None, :] + 1) / width[None, :], 0.0, 1.0)
    return (covered * prob[None, :]).sum(axis=1)


def test_tables_under_the_cap_are_the_exact_counts():
    trace = synthetic_trace(seed=4, duration_s=7_200, n_clients=3, reasoning=True)
    pool = fit_client_pool(trace, 600, 3_600, 20)
    assert BIN_WIDTH not in pool.pmfs  # nothing binned: the columns (and files) are as before
    for client, rows in trace.groupby("client_id"):
        got = _table(pool, client, "input_tokens").set_index("value")["count"]
        want = rows["input_tokens"].value_counts().sort_index().astype(np.float64)
        np.testing.assert_array_equal(got.index.to_numpy(), want.index.to_numpy())
        np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())


def test_a_table_past_the_cap_is_binned_bounded_and_close_to_the_exact_one(monkeypatch):
    monkeypatch.setattr(bins, "VALUE_CAP", 1_000)
    trace = _wide_trace()
    pool = fit_client_pool(trace, 600, 3_600, 20)
    sizes = pool.pmfs.groupby(["client_id", "window_start_s", "field"], observed=True).size()
    assert sizes.max() <= bins.EXACT_BELOW + 25 * bins.BINS_PER_OCTAVE
    table = _table(pool, "big", "input_tokens")
    assert (table[BIN_WIDTH] > 1).any()
    # Below EXACT_BELOW the entries stay exact values, with their exact counts.
    values = trace.loc[trace["client_id"] == "big", "input_tokens"].to_numpy()
    small = table[table["value"] < bins.EXACT_BELOW]
    assert (small[BIN_WIDTH] == 1).all()
    want = pd.Series(values[values < bins.EXACT_BELOW]).value_counts().sort_index()
    np.testing.assert_array_equal(small["count"].to_numpy(), want.to_numpy().astype(np.float64))
    # The marginal stays within the stated KS bound (the largest bin's share) of the exact table.
    x = np.arange(values.max() + 2)
    exact = np.searchsorted(np.sort(values), x, side="right") / len(values)
    ks = np.abs(_binned_cdf(table, x) - exact).max()
    assert ks <= table["prob"].max() + 1e-12
    assert ks < 0.02
    # Output lengths (fewer distinct values than the cap) stay exact.
    assert (_table(pool, "big", "output_tokens").get(BIN_WIDTH, pd.Series([1])) == 1).all()


def test_binned_pools_sample_inside_bins_reproducibly_and_score_every_value(monkeypatch, tmp_path):
    monkeypatch.setattr(bins, "VALUE_CAP", 1_000)
    trace = _wide_trace()
    gen = ParametricGenerator(data_window_s=3_600).fit(trace)
    gen.save(tmp_path / "ckpt")
    loaded = ParametricGenerator.load(tmp_path / "ckpt")
    pd.testing.assert_frame_equal(loaded.pool_.pmfs, gen.pool_.pmfs)
    spec = GenerationSpec.from_values(duration_s=7_200, seed=5)
    a = sample_pool(loaded.pool_, spec, np.random.default_rng(5))
    b = sample_pool(loaded.pool_, spec, np.random.default_rng(5))
    pd.testing.assert_frame_equal(a, b)
    real = trace.loc[trace["client_id"] == "big", "input_tokens"].to_numpy()
    drawn = a.loc[a["client_id"] == "big", "input_tokens"].to_numpy()
    # Values fall between bin edges, not only on them; the sample follows the real marginal.
    above = drawn[drawn >= bins.EXACT_BELOW]
    assert (~np.isin(above, bins._EDGES)).mean() > 0.9
    grid = np.unique(np.r_[real, drawn])
    ks = np.abs(
        np.searchsorted(np.sort(real), grid, side="right") / len(real)
        - np.searchsorted(np.sort(drawn), grid, side="right") / len(drawn)
    ).max()
    assert ks < 0.03
    lp = loaded.log_prob(trace)
    assert np.isfinite(lp["input_tokens"]).all()
    # Inside a bin, the empirical mass is shared evenly: equal log-probabilities for its integers.
    table = loaded.pool_.field_table("input_tokens")
    group = table.resolve(np.array([0, 0]), np.array([table.group_of.shape[1] - 1] * 2))
    wide = np.flatnonzero(table.width > 3)[0]
    lo = table.values[wide]
    same = table.log_pmf(group, np.array([0, 0]), np.array([lo, lo + 1]))
    assert same[0] == pytest.approx(same[1], abs=1e-3)


@pytest.mark.parametrize("rows", [333, 2_048, 9_999])
def test_binning_does_not_depend_on_the_chunking(rows, monkeypatch):
    # A small cap, budget and checkpoint interval make every mechanism act several times.
    monkeypatch.setattr(bins, "VALUE_CAP", 700)
    monkeypatch.setattr(bins, "ENTRY_BUDGET", 3_000)
    monkeypatch.setattr(bins, "CHECK_ROWS", 4_096)
    trace = _wide_trace(30_000, seed=2)
    whole = fit_client_pool(trace, 600, 1_800, 20)
    fitter = PoolFitter(600, 1_800, 20)
    for i in range(0, len(trace), rows):
        fitter.add(trace.iloc[i : i + rows])
        assert len(fitter._values.keys) <= bins.ENTRY_BUDGET + 2 * rows + (1 << 20)
    chunked = fitter.finish()
    # Within the budget, or every table binned (then the tables x 640 entries bound it).
    values = fitter._values
    assert len(values.keys) <= bins.ENTRY_BUDGET or values.binned[np.unique(values.keys >> 32)].all()
    assert (whole.pmfs[BIN_WIDTH] > 1).any()
    pd.testing.assert_frame_equal(whole.pmfs, chunked.pmfs)
    pd.testing.assert_frame_equal(whole.rates, chunked.rates)


def test_the_budget_bins_the_largest_tables_first(monkeypatch):
    monkeypatch.setattr(bins, "ENTRY_BUDGET", 12_000)
    trace = _wide_trace(30_000, seed=3)
    pool = fit_client_pool(trace, 600, 7_200, 20)
    big = _table(pool, "big", "input_tokens", 0.0)
    small = _table(pool, "small", "input_tokens", 0.0)
    assert (big[BIN_WIDTH] > 1).any()
    assert (small[BIN_WIDTH] == 1).all()
    # Its whole-trace table is binned too (a part is), and so is the population's.
    assert (_table(pool, "big", "input_tokens")[BIN_WIDTH] > 1).any()
    assert (_table(pool, "*", "input_tokens")[BIN_WIDTH] > 1).any()


def test_reasoning_ratios_bin_to_three_decimals(monkeypatch):
    monkeypatch.setattr(bins, "ENTRY_BUDGET", 1_000)
    trace = synthetic_trace(seed=1, duration_s=7_200, n_clients=2, reasoning=True)
    pool = fit_client_pool(trace, 600, 7_200, 20)
    ratio = pool.pmfs[pool.pmfs["field"] == "reason_ratio"]
    assert len(ratio)
    np.testing.assert_allclose(ratio["value"] * 1_000, np.round(ratio["value"] * 1_000), atol=1e-6)
    assert (ratio[BIN_WIDTH] == 1).all()


def test_token_counts_beyond_the_key_range_are_refused():
    trace = synthetic_trace(seed=0, duration_s=600)
    trace.loc[5, "input_tokens"] = 2**33
    with pytest.raises(Exception, match="input_tokens: values must be token counts"):
        fit_client_pool(trace)
