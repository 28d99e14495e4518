"""servegen_ml: learn LLM-serving workloads from request traces and generate synthetic ones."""

from servegen_ml.core.version import __version__

__all__ = ["__version__"]
