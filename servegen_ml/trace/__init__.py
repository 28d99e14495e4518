"""Traces: the canonical schema, validation, streaming reading and atomic writing, format adapters.

:mod:`~servegen_ml.trace.io` reads and writes files; :mod:`~servegen_ml.trace.schema`
defines the columns; :mod:`~servegen_ml.trace.adapters` maps public formats.
"""

from servegen_ml.trace.io import TraceReader, detect_format, iter_trace_chunks, read_trace, write_trace
from servegen_ml.trace.schema import make_trace
from servegen_ml.trace.validate import validate_trace

__all__ = [
    "TraceReader",
    "detect_format",
    "iter_trace_chunks",
    "make_trace",
    "read_trace",
    "validate_trace",
    "write_trace",
]
