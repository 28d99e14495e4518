"""The bottom layer: what every other layer shares and nothing here imports from above.

Time constants and wrapping and the generation spec (:mod:`~servegen_ml.core.spec`),
``UserError`` (:mod:`~servegen_ml.core.errors`), config loading
(:mod:`~servegen_ml.core.config`), atomic writes (:mod:`~servegen_ml.core.atomic`),
model-part metafiles (:mod:`~servegen_ml.core.metafile`), client codes
(:mod:`~servegen_ml.core.clients`) and progress lines (:mod:`~servegen_ml.core.progress`).
"""

from servegen_ml.core.atomic import atomic_dir, atomic_path, write_text
from servegen_ml.core.clients import client_codes
from servegen_ml.core.errors import UserError
from servegen_ml.core.metafile import read_meta
from servegen_ml.core.spec import (
    DAY_S,
    TIME_RESOLUTION_S,
    WEEK_S,
    ClientSpec,
    GenerationSpec,
    RateSpec,
    wrap_period,
    wrap_time,
)
from servegen_ml.core.version import __version__

__all__ = [
    "DAY_S",
    "TIME_RESOLUTION_S",
    "WEEK_S",
    "ClientSpec",
    "GenerationSpec",
    "RateSpec",
    "UserError",
    "__version__",
    "atomic_dir",
    "atomic_path",
    "client_codes",
    "read_meta",
    "wrap_period",
    "wrap_time",
    "write_text",
]
