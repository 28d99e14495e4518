import numpy as np
import pytest
from scipy import stats as sps

from servegen_ml.stats.dependence import spearman, weighted_within_group_spearman, within_group_spearman
from servegen_ml.stats.multimodal import MultimodalAccumulator, media_tokens_per_request
from servegen_ml.trace.schema import list_lengths, make_list_column
from tests.factories import synthetic_trace


def test_media_tokens_per_request_sums_items():
    col = make_list_column(np.array([0, 2, 1, 0, 3]), np.array([10, 20, 5, 1, 1, 1]))
    assert list(media_tokens_per_request(col)) == [0, 30, 5, 0, 3]


def test_multimodal_accumulator_counts_items_and_tokens():
    trace = synthetic_trace(seed=1, duration_s=1800, n_clients=2, multimodal=True)
    t = trace["timestamp"].to_numpy()
    acc = MultimodalAccumulator(
        ["image_tokens"], float(t[0]), np.random.default_rng(0), has_text=True, sample=500
    )
    for part in np.array_split(np.arange(len(trace)), 4):
        acc.add(t[part], trace.iloc[part].reset_index(drop=True))
    r = acc.result()
    counts = list_lengths(trace["image_tokens"])
    assert r["modalities"]["image"]["items_per_request"]["mean"] == pytest.approx(counts.mean())
    assert r["modalities"]["image"]["share_of_requests_with_items"] == pytest.approx((counts > 0).mean())
    assert r["text_vs_media"]["sample_size"] == 500


def test_within_group_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 4, 3000)
    x = np.round(rng.normal(size=3000), 1)
    y = x * (keys + 1) * 0.3 + rng.normal(size=3000)
    per = within_group_spearman(keys, x, y).set_index("key")
    for k in range(4):
        assert per.loc[k, "spearman"] == pytest.approx(sps.spearmanr(x[keys == k], y[keys == k]).statistic)
    assert weighted_within_group_spearman(keys, x, y) == pytest.approx(
        np.average(per["spearman"], weights=per["rows"])
    )
    assert np.isnan(spearman(np.ones(10), np.arange(10)))
