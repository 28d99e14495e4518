import numpy as np

from servegen_ml.stats.reasoning import BIMODAL_THRESHOLD, ReasoningAccumulator, bimodality_coefficient


def _ratio_trace(ratio, rng):
    out = rng.integers(50, 2000, len(ratio))
    return np.floor(ratio * out).astype(np.int64), out


def test_bimodal_ratio_is_detected_and_unimodal_is_not():
    rng = np.random.default_rng(0)
    n = 20_000
    bimodal = np.where(rng.random(n) < 0.5, rng.beta(2, 30, n), rng.beta(30, 2, n))
    unimodal = rng.beta(8, 8, n)
    results = {}
    for name, ratio in (("bimodal", bimodal), ("unimodal", unimodal)):
        reasoning, out = _ratio_trace(ratio, rng)
        acc = ReasoningAccumulator(np.random.default_rng(1), sample=2000)
        for part in np.array_split(np.arange(n), 3):
            acc.add(out[part] * 3, out[part], reasoning[part])
        results[name] = acc.result()
    assert results["bimodal"]["bimodal"] is True
    assert results["bimodal"]["ratio"]["bimodality_coefficient"] > BIMODAL_THRESHOLD
    assert results["unimodal"]["bimodal"] is False
    assert bimodality_coefficient(unimodal) < BIMODAL_THRESHOLD < bimodality_coefficient(bimodal)
    assert results["bimodal"]["ratio"]["share_below_0.1"] > 0.4


def test_zero_output_rows_have_no_ratio():
    acc = ReasoningAccumulator(np.random.default_rng(0))
    acc.add(np.array([10, 10]), np.array([0, 4]), np.array([0, 4]))
    r = acc.result()
    assert r["ratio"]["count"] == 1 and r["ratio"]["share_one"] == 1.0
