"""servegen_ml: learn LLM-serving workloads from request traces and generate synthetic ones.

The public names below load on first use, so ``import servegen_ml.core``
(or the CLI) does not pay for the whole package::

    from servegen_ml import GenerationSpec, ParametricGenerator, load_generator, read_trace
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from servegen_ml.core.version import __version__

_EXPORTS = {
    "GenerationSpec": "servegen_ml.core.spec",
    "UserError": "servegen_ml.core.errors",
    "read_trace": "servegen_ml.trace.io",
    "write_trace": "servegen_ml.trace.io",
    "iter_trace_chunks": "servegen_ml.trace.io",
    "read_source": "servegen_ml.pool.source",
    "Generator": "servegen_ml.generators.base",
    "load_generator": "servegen_ml.generators.base",
    "summarize_log_prob": "servegen_ml.generators.base",
    "NaiveGenerator": "servegen_ml.generators.naive",
    "ParametricGenerator": "servegen_ml.generators.parametric",
    "NeuralGenerator": "servegen_ml.generators.neural",
    "export_trace": "servegen_ml.export",
    "WorkloadWriter": "servegen_ml.export",
}

__all__ = [
    "GenerationSpec",
    "Generator",
    "NaiveGenerator",
    "NeuralGenerator",
    "ParametricGenerator",
    "UserError",
    "WorkloadWriter",
    "__version__",
    "export_trace",
    "iter_trace_chunks",
    "load_generator",
    "read_source",
    "read_trace",
    "summarize_log_prob",
    "write_trace",
]

if TYPE_CHECKING:
    from servegen_ml.core.errors import UserError
    from servegen_ml.core.spec import GenerationSpec
    from servegen_ml.export import WorkloadWriter, export_trace
    from servegen_ml.generators.base import Generator, load_generator, summarize_log_prob
    from servegen_ml.generators.naive import NaiveGenerator
    from servegen_ml.generators.neural import NeuralGenerator
    from servegen_ml.generators.parametric import ParametricGenerator
    from servegen_ml.pool.source import read_source
    from servegen_ml.trace.io import iter_trace_chunks, read_trace, write_trace


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'servegen_ml' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
