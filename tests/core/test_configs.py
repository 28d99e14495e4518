"""Every config file composes, and every model and experiment builds its generator."""

from __future__ import annotations

import inspect

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from servegen_ml.core.config import compose, config_dir
from servegen_ml.generators.training import build_generator

CONFIGS = config_dir()
COMMANDS = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in CONFIGS.iterdir() if g.is_dir()}


def test_the_config_tree_is_what_the_tests_cover():
    assert COMMANDS == ["bench", "characterize", "convert", "export", "generate", "train", "validate"]
    assert set(GROUPS) == {"data", "experiment", "model", "trainer"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_config_composes(command):
    cfg = compose(command, [])
    assert ("out" in cfg.keys()) == (command != "validate")  # every other command writes a file
    OmegaConf.to_yaml(cfg)  # every interpolation resolves


@pytest.mark.parametrize("name", GROUPS["model"])
def test_every_model_config_builds_its_generator(name):
    cfg = compose("train", [f"model={name}", "data.path=x", "out=y"])
    generator = instantiate(cfg.model)
    assert generator.kind == name and not generator.is_fitted


@pytest.mark.parametrize("name", GROUPS["trainer"])
def test_every_trainer_config_instantiates_its_trainer_and_callbacks(name, tmp_path):
    import lightning
    from hydra.utils import get_class

    from servegen_ml.neural.training.fit import OUR_TRAINER_KEYS, _make_trainer, trainer_spec

    trainer = OmegaConf.to_container(compose("train", [f"trainer={name}"]).trainer, resolve=True)
    assert trainer["name"] == name
    spec = trainer_spec(trainer)
    assert get_class(spec["_target_"]) is lightning.Trainer
    assert {get_class(c["_target_"]).__name__ for c in spec["callbacks"].values()} == {
        "ModelCheckpoint",
        "EarlyStopping",
    }
    accepted = set(inspect.signature(lightning.Trainer).parameters)
    assert set(spec) - {"_target_", "callbacks", "logger", *OUR_TRAINER_KEYS} <= accepted
    if trainer["accelerator"] == "cpu" and trainer["strategy"] == "auto":
        built = _make_trainer(trainer, tmp_path, "val_nll")
        assert isinstance(built, lightning.Trainer) and built.max_epochs == trainer["max_epochs"]
        assert built.checkpoint_callback.dirpath == str(tmp_path / "checkpoints")
        assert [type(c).__name__ for c in built.callbacks if type(c).__name__ == "EarlyStopping"]


def test_a_callback_is_configured_or_dropped_from_the_command_line(tmp_path):
    from servegen_ml.neural.training.fit import _make_trainer

    overrides = ["trainer=fast", "trainer.callbacks.early_stopping.patience=7"]
    trainer = OmegaConf.to_container(compose("train", overrides).trainer, resolve=True)
    (stop,) = [
        c
        for c in _make_trainer(trainer, tmp_path, "val_nll").callbacks
        if type(c).__name__ == "EarlyStopping"
    ]
    assert stop.patience == 7 and stop.monitor == "val_nll"
    trainer = OmegaConf.to_container(
        compose("train", ["trainer=fast", "trainer.callbacks.early_stopping=null"]).trainer, resolve=True
    )
    assert not [
        c
        for c in _make_trainer(trainer, tmp_path, "val_nll").callbacks
        if type(c).__name__ == "EarlyStopping"
    ]


@pytest.mark.parametrize("name", GROUPS["experiment"])
def test_every_experiment_composes_and_builds_its_generator(name):
    cfg = compose("train", [f"+experiment={name}", "out=y", "data.path=x"])
    generator = build_generator(cfg)
    assert generator.kind == "neural" and generator.trainer["max_epochs"] == cfg.trainer.max_epochs
    assert generator.trainer["callbacks"]["early_stopping"]["_target_"].endswith("EarlyStopping")


def test_bench_composes_with_every_trainer():
    for name in GROUPS["trainer"]:
        assert compose("bench", [f"trainer={name}", "data.path=x", "out=y"]).trainer.accelerator in (
            "cpu",
            "gpu",
        )


def test_model_keys_and_types_are_checked_when_the_config_composes():
    from servegen_ml.core.errors import UserError

    with pytest.raises(UserError, match="model.hidden"):
        compose("train", ["model=neural", "model.hidden=many"])
    with pytest.raises(UserError, match="hiden"):
        compose("train", ["model=neural", "model.hiden=3"])
    cfg = compose("train", ["model=parametric", "model.rate_window_s=300"])
    assert cfg.model.rate_window_s == 300.0 and isinstance(cfg.model.rate_window_s, float)


def test_neural_config_is_the_one_definition_of_the_neural_hyperparameters():
    import dataclasses

    from servegen_ml.core.configs import NeuralConfig
    from servegen_ml.generators.neural import NeuralGenerator

    yaml_keys = set(compose("train", ["model=neural"]).model) - {"_target_"}
    assert yaml_keys == {f.name for f in dataclasses.fields(NeuralConfig)}
    gen = NeuralGenerator(hidden="32", rate_bin_s=300, trainer={"max_epochs": 1})
    assert gen.config_.hidden == 32 and isinstance(gen.config_.rate_bin_s, float)
    assert NeuralGenerator(**gen.config()).config() == gen.config()  # a manifest's config rebuilds it
    with pytest.raises(ValueError, match="val_fraction"):
        NeuralConfig(val_fraction=1.0)
    with pytest.raises(TypeError, match="hiden"):
        NeuralGenerator(hiden=3)


def test_a_trainer_dict_from_python_or_an_older_manifest_gets_the_base():
    from servegen_ml.neural.training.fit import trainer_spec

    spec = trainer_spec({"max_epochs": 2, "early_stopping_patience": 5})  # as older manifests wrote it
    assert spec["max_epochs"] == 2 and spec["callbacks"]["early_stopping"]["patience"] == 5
    assert "early_stopping_patience" not in spec and spec["_target_"] == "lightning.pytorch.Trainer"
