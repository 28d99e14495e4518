"""servegen_ml: learn LLM-serving workloads from request traces and generate synthetic ones."""

__version__ = "0.1.0"
