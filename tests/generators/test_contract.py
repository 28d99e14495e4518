"""The contract every generator passes (docs/architecture.md, "The generator interface").

``GENERATOR_FACTORIES`` is a list of ``(name, factory)``; a factory returns an
unfitted generator and the fixture trace to fit it on. Other generators join
by appending to the list, e.g. ``GENERATOR_FACTORIES.append(("neural", make_neural))``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.base import NotFittedError, load_generator
from servegen_ml.generators.naive import NaiveGenerator
from servegen_ml.generators.parametric import ParametricGenerator
from servegen_ml.trace.schema import REQUIRED_COLUMNS
from servegen_ml.trace.validate import validate_trace
from tests.factories import synthetic_trace


def _fixture_trace() -> pd.DataFrame:
    return synthetic_trace(seed=0, duration_s=1800.0, n_clients=3, multimodal=True, reasoning=True)


GENERATOR_FACTORIES = [
    ("naive", lambda: (NaiveGenerator(), _fixture_trace())),
    ("naive-gamma", lambda: (NaiveGenerator(arrival="gamma"), _fixture_trace())),
    ("parametric", lambda: (ParametricGenerator(rate_window_s=300.0, data_window_s=900.0), _fixture_trace())),
]


def make_neural():
    """A tiny, fast-training neural generator (seconds on 2 cores)."""
    from servegen_ml.generators.neural import NeuralGenerator

    trainer = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 3,
        "default_root_dir": None,
        "num_threads": 1,
    }
    small = {"hidden": 16, "embedding": 4, "head_hidden": 16, "time_components": 3, "mark_components": 3}
    return NeuralGenerator(**small, chunk_len=32, lanes=16, trainer=trainer), _fixture_trace()


GENERATOR_FACTORIES.append(("neural", make_neural))

_FITTED: dict[str, tuple] = {}
SPEC = GenerationSpec.from_values(duration_s=600.0, start_s=300.0)


def fitted(name: str):
    """(fitted generator, its training trace), fitted once per test session."""
    if name not in _FITTED:
        gen, trace = dict(GENERATOR_FACTORIES)[name]()
        _FITTED[name] = (gen.fit(trace), trace)
    return _FITTED[name]


def pytest_generate_tests(metafunc):
    if "name" in metafunc.fixturenames:
        metafunc.parametrize("name", [n for n, _ in GENERATOR_FACTORIES])


def test_fit_returns_self(name):
    gen, trace = dict(GENERATOR_FACTORIES)[name]()
    assert not gen.is_fitted
    assert gen.fit(trace) is gen
    assert gen.is_fitted


def test_sample_and_score_before_fit_raise(name):
    gen, trace = dict(GENERATOR_FACTORIES)[name]()
    with pytest.raises(NotFittedError):
        gen.sample(SPEC, np.random.default_rng(0))
    with pytest.raises(NotFittedError):
        gen.log_prob(trace)
    with pytest.raises(NotFittedError):
        gen.save("never-written")


def test_same_seed_same_trace_different_seed_differs(name):
    gen, _ = fitted(name)
    a = gen.sample(SPEC, np.random.default_rng(7))
    b = gen.sample(SPEC, np.random.default_rng(7))
    c = gen.sample(SPEC, np.random.default_rng(8))
    pd.testing.assert_frame_equal(a, b)
    assert len(a) > 100
    assert not (len(a) == len(c) and a.equals(c))


def test_output_validates_and_respects_duration(name):
    gen, trace = fitted(name)
    for spec in (SPEC, GenerationSpec.from_values(duration_s=900.0, start_s=3000.0, rate="scale:2")):
        out = gen.sample(spec, np.random.default_rng(1))
        clean, report = validate_trace(out, "sample")
        pd.testing.assert_frame_equal(clean, out)
        assert report.resorted_rows == 0 and report.rows_dropped == 0
        assert set(REQUIRED_COLUMNS) <= set(out.columns)
        ts = out["timestamp"].to_numpy()
        assert ts.min() >= 0.0 and ts.max() < spec.duration_s
        assert (np.diff(ts) >= 0).all()
        # Fields of the training trace are generated too (multimodal lists, reasoning).
        assert {"image_tokens", "reasoning_tokens"} <= set(out.columns)


def test_log_prob_finite_on_training_and_sampled_traces(name):
    gen, trace = fitted(name)
    for tr in (trace, gen.sample(SPEC, np.random.default_rng(2))):
        lp = gen.log_prob(tr)
        assert len(lp) == len(tr)
        assert {"time", "total", "input_tokens", "output_tokens"} <= set(lp.columns)
        assert np.isfinite(lp.to_numpy()).all()
        parts = lp.drop(columns="total").sum(axis=1)
        np.testing.assert_allclose(parts, lp["total"])
        # Log-probabilities of discrete outcomes are <= 0.
        assert (lp.drop(columns=["total"]).to_numpy() <= 1e-9).all()


def test_save_load_reproduces_samples(name, tmp_path):
    gen, trace = fitted(name)
    gen.save(tmp_path / "ck")
    loaded = load_generator(tmp_path / "ck")
    assert type(loaded) is type(gen)
    assert loaded.config() == gen.config()
    pd.testing.assert_frame_equal(
        loaded.sample(SPEC, np.random.default_rng(3)), gen.sample(SPEC, np.random.default_rng(3))
    )
    head = trace.iloc[:500].reset_index(drop=True)
    pd.testing.assert_frame_equal(loaded.log_prob(head), gen.log_prob(head))
