"""scripts/calibrate_neural.py adds the model's own rate curves to an older neural checkpoint in place."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.base import load_generator
from servegen_ml.generators.neural import NeuralGenerator
from tests.neural.test_generate import SEGMENT_EVENTS, WARMUP_EVENTS, model  # noqa: F401 (fixture)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "calibrate_neural.py"


def load_script():
    spec = importlib.util.spec_from_file_location("calibrate_neural", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calibration_adds_the_curves_and_keeps_weights_and_other_files(model, tmp_path):  # noqa: F811
    state, _ = model
    old = NeuralGenerator(segment_events=SEGMENT_EVENTS, warmup_events=WARMUP_EVENTS)
    old._set_state(state)  # a fitted state without model_rate_curves: an older checkpoint
    ck = old.save(tmp_path / "ck")
    (ck / "metrics.json").write_text('{"fit_seconds": 1.0}\n')
    weights = (ck / "model.safetensors").read_bytes()

    report = load_script().calibrate(ck)
    gen = load_generator(ck)
    assert gen.state_.model_rate_curves.shape == state.rate_curves.shape
    assert report["model_requests_per_pass"] > 0
    assert (ck / "model.safetensors").read_bytes() == weights
    assert json.loads((ck / "metrics.json").read_text()) == {"fit_seconds": 1.0}
    assert not [p.name for p in tmp_path.iterdir() if p.name != "ck"]  # no temporaries left
    # The reloaded checkpoint samples a constant target reproducibly and reaches it.
    spec = GenerationSpec.from_values(duration_s=600.0, start_s=300.0, rate=5)
    a = gen.sample(spec, np.random.default_rng(0))
    assert a.equals(load_generator(ck).sample(spec, np.random.default_rng(0)))
    assert len(a) / 600.0 == pytest.approx(5.0, rel=0.2)
    # Already calibrated: left alone unless forced.
    assert "skipped" in load_script().calibrate(ck)
