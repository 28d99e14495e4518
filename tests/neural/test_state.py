"""NeuralState checkpoint files: the rate level round-trips; a checkpoint without one asks to be rebuilt."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from servegen_ml.core.errors import CheckpointError
from servegen_ml.neural.sampling.draws import RATIO_SPIKE_SCALE
from servegen_ml.neural.state import META_FILE, MODEL_FILE, NeuralState
from tests.neural.test_generate import model  # noqa: F401 (fixture)


def test_the_rate_level_round_trips_in_float64(model, tmp_path):  # noqa: F811
    state, _ = model
    state.save(tmp_path)
    loaded = NeuralState.load(tmp_path)
    assert loaded.weights["rate_level"].dtype == np.float64
    np.testing.assert_array_equal(loaded.weights["rate_level"], state.weights["rate_level"])
    np.testing.assert_array_equal(loaded.rate_curves, state.rate_curves)


def test_a_checkpoint_from_before_the_rate_level_asks_to_be_rebuilt(model, tmp_path):  # noqa: F811
    state, _ = model
    state.save(tmp_path)
    weights = load_file(str(tmp_path / MODEL_FILE))
    del weights["rate_level"]
    save_file(weights, str(tmp_path / MODEL_FILE))
    with pytest.raises(CheckpointError, match="rate_level.*retrain"):
        NeuralState.load(tmp_path)


@pytest.mark.parametrize("bad", ["shape", "zero"])
def test_a_bad_rate_level_is_refused(model, tmp_path, bad):  # noqa: F811
    state, _ = model
    state.save(tmp_path)
    weights = load_file(str(tmp_path / MODEL_FILE))
    level = weights["rate_level"]
    weights["rate_level"] = (
        level[:, :1].copy() if bad == "shape" else np.where(level > level.min(), level, 0.0)
    )
    save_file(weights, str(tmp_path / MODEL_FILE))
    with pytest.raises(CheckpointError, match="rate_level"):
        NeuralState.load(tmp_path)


def test_reasoning_spikes_off_the_ratio_grid_are_refused(tmp_path):
    """A reasoning checkpoint from before the ratio spikes (the shipped one without its
    spikes_reasoning) loads with none; keys beyond ratio 1 would give more reasoning than output
    and are refused."""
    shipped = Path(__file__).resolve().parents[2] / "checkpoints" / "reasoning" / "neural"
    ckpt = tmp_path / "neural"
    shutil.copytree(shipped, ckpt)
    weights = load_file(str(ckpt / MODEL_FILE))
    assert len(weights.pop("spikes_reasoning")) > 0
    save_file(weights, str(ckpt / MODEL_FILE))
    assert len(NeuralState.load(ckpt).weights["spikes_reasoning"]) == 0
    weights["spikes_reasoning"] = np.array([RATIO_SPIKE_SCALE + 1], dtype=np.int64)
    save_file(weights, str(ckpt / MODEL_FILE))
    with pytest.raises(CheckpointError, match="spikes_reasoning.*above"):
        NeuralState.load(ckpt)


@pytest.mark.parametrize("quantum", [-3.0, "3", None])
def test_a_bad_time_quantum_is_refused_and_an_absent_one_is_none(model, tmp_path, quantum):  # noqa: F811
    state, _ = model
    state.save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    if quantum is None:
        del meta["time_quantum_s"]  # a checkpoint from before the lattice
        (tmp_path / META_FILE).write_text(json.dumps(meta))
        assert NeuralState.load(tmp_path).time_quantum_s == 0.0
        return
    meta["time_quantum_s"] = quantum
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="time_quantum_s"):
        NeuralState.load(tmp_path)
