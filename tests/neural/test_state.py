"""NeuralState checkpoint files: the model's own rate curves are optional and round-trip."""

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from servegen_ml.neural.state import CLIENTS_FILE, NeuralState
from tests.neural.test_generate import model  # noqa: F401 (fixture)


def test_model_rate_curves_round_trip(model, tmp_path):  # noqa: F811
    state, _ = model
    curves = np.arange(state.rate_curves.size, dtype=np.float32).reshape(state.rate_curves.shape) / 7
    NeuralState(**{**state.__dict__, "model_rate_curves": curves}).save(tmp_path)
    loaded = NeuralState.load(tmp_path)
    assert loaded.model_rate_curves.dtype == np.float32
    np.testing.assert_array_equal(loaded.model_rate_curves, curves)
    np.testing.assert_array_equal(loaded.rate_curves, state.rate_curves)


def test_a_checkpoint_without_model_rate_curves_loads(model, tmp_path):  # noqa: F811
    state, _ = model
    state.save(tmp_path)
    assert "model_rate_curves" not in load_file(str(tmp_path / CLIENTS_FILE))
    loaded = NeuralState.load(tmp_path)
    assert loaded.model_rate_curves is None
    np.testing.assert_array_equal(loaded.rate_curves, state.rate_curves)


def test_model_rate_curves_of_the_wrong_shape_are_refused(model, tmp_path):  # noqa: F811
    state, _ = model
    state.save(tmp_path)
    clients = load_file(str(tmp_path / CLIENTS_FILE))
    save_file(
        {**clients, "model_rate_curves": np.zeros((1, 2), dtype=np.float32)}, str(tmp_path / CLIENTS_FILE)
    )
    with pytest.raises(ValueError, match="model_rate_curves"):
        NeuralState.load(tmp_path)
