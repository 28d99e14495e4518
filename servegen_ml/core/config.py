"""Finding ``configs/`` and composing a command's Hydra config with ``key=value`` overrides."""

from __future__ import annotations

import os
from pathlib import Path

from servegen_ml.core.configs import register_configs
from servegen_ml.core.errors import UserError
from servegen_ml.core.resources import resource_dir


def config_dir() -> Path:
    """``$SERVEGEN_ML_CONFIG_DIR``, else the configs shipped in the wheel or the checkout's ``configs/``."""
    env = os.environ.get("SERVEGEN_ML_CONFIG_DIR")
    path = Path(env) if env else resource_dir("configs")
    if not path.is_dir():
        raise UserError(
            f"config directory {path} not found; set SERVEGEN_ML_CONFIG_DIR to servegen-ml's configs/"
        )
    return path


def compose(command: str, overrides: list[str]):
    """The resolved config of ``command`` with ``key=value`` overrides applied."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose(config_name=command, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(f"bad arguments for '{command}': {e}") from None
