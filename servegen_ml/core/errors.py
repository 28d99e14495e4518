"""Errors every layer may raise: the project's own input errors, which the CLI reports as bad input
(exit 2, no traceback) rather than as a bug (exit 1).

Each subclass also derives from the built-in the library raised before, so callers that catch
``ValueError`` or ``FileNotFoundError`` keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user (a file, a row, a field, an option): printed without a traceback, exit 2."""


class InputNotFoundError(UserError, FileNotFoundError):
    """An input file or directory named by the user does not exist."""

    def __str__(self) -> str:  # FileNotFoundError would print "[Errno ...]" for one argument only.
        return str(self.args[0]) if self.args else ""


class CheckpointError(UserError):
    """A checkpoint directory is missing, damaged, inconsistent or of an unknown kind (names file and field)."""


class OutputError(UserError):
    """An output cannot be written (not writable, no space, would replace something that is not ours)."""


class TrainingDivergedError(UserError):
    """A training loss became NaN or infinite: the run stops before writing a checkpoint of broken weights
    (the remedy is on the user's side: a lower learning rate, or extreme values in the trace)."""

    def __init__(self, model: str, stage: str, step: int, value: float, terms: str = ""):
        where = f" (in: {terms})" if terms else ""
        super().__init__(
            f"{model}'s {'training' if stage == 'train' else 'validation'} NLL became {value} at step "
            f"{step}{where}; no checkpoint is written: try a lower model.lr, or look for extreme values "
            "in the trace"
        )


class WorkerFinished(Exception):
    """A distributed training worker (not global rank 0) is done: only rank 0 writes the checkpoint.

    Raised instead of exiting the process so that library code never calls ``sys.exit``;
    the CLI (and ``train/train.py``) end such a worker with exit code 0.
    """
