"""Checks on what a checkpoint loader reads: every damage becomes a :class:`CheckpointError` naming the
file and the field, instead of a traceback at load or a silently wrong workload at sampling.

Loaders call :func:`meta_field`, :func:`check_number`, :func:`check_array`, :func:`check_table` on the values they read;
:func:`read_json_object` and :func:`read_safetensors` turn unreadable files into the same error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from servegen_ml.core.errors import CheckpointError


def read_json_object(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({what})")
    try:
        value = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable {what} ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: the {what} must be a JSON object, got {type(value).__name__}")
    return value


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file (numpy, no torch); truncation and corruption are CheckpointErrors."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file, truncated or corrupt ({e})") from None


def meta_field(meta: dict, key: str, path: Path, kind: type | tuple[type, ...]):
    """``meta[key]`` after checking it is present and of ``kind`` (bool is never a number)."""
    if key not in meta:
        raise CheckpointError(f"{path}: field '{key}' is missing")
    value = meta[key]
    numbers = kind in (int, float) or (isinstance(kind, tuple) and float in kind)
    if not isinstance(value, kind) or (numbers and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise CheckpointError(
            f"{path}: field '{key}' must be {names}, got {type(value).__name__} {value!r:.60}"
        )
    return value


def check_number(
    value, path: Path, key: str, *, positive: bool = False, minimum: float | None = None
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"{path}: field '{key}' must be a finite number, got {value!r:.60}")
    if positive and not value > 0:
        raise CheckpointError(f"{path}: field '{key}' must be positive, got {value!r}")
    if minimum is not None and value < minimum:
        raise CheckpointError(f"{path}: field '{key}' must be >= {minimum:g}, got {value!r}")
    return float(value)


def check_ids(value, path: Path, key: str) -> list[str]:
    """A non-empty list of distinct strings."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CheckpointError(f"{path}: field '{key}' must be a list of strings")
    if not value:
        raise CheckpointError(f"{path}: field '{key}' is empty")
    if len(set(value)) != len(value):
        raise CheckpointError(f"{path}: field '{key}' has duplicate ids")
    return value


def check_array(
    array: np.ndarray,
    path: Path,
    key: str,
    *,
    shape: Sequence[int | None] | None = None,
    kind: str = "f",
    minimum: float | None = None,
    maximum: float | None = None,
) -> np.ndarray:
    """Dtype kind ('f' float, 'i' integer), shape (None: any length on that axis), finiteness, range."""
    if not isinstance(array, np.ndarray):
        raise CheckpointError(f"{path}: '{key}' is not an array")
    kinds = {"f": "fc", "i": "iu"}[kind]
    if array.dtype.kind not in kinds:
        raise CheckpointError(
            f"{path}: '{key}' has dtype {array.dtype}, expected {'float' if kind == 'f' else 'integer'}"
        )
    if shape is not None and (
        array.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape))
    ):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise CheckpointError(f"{path}: '{key}' has shape {array.shape}, expected {want}")
    if array.dtype.kind in "fc" and array.size and not np.isfinite(array).all():
        raise CheckpointError(f"{path}: '{key}' holds {int((~np.isfinite(array)).sum())} non-finite value(s)")
    if minimum is not None and array.size and array.min() < minimum:
        raise CheckpointError(f"{path}: '{key}' holds values below {minimum:g} (min {array.min():g})")
    if maximum is not None and array.size and array.max() > maximum:
        raise CheckpointError(f"{path}: '{key}' holds values above {maximum:g} (max {array.max():g})")
    return array


def check_table(
    df: pd.DataFrame, path: Path, ranges: dict[str, tuple[str, float | None, float | None]]
) -> None:
    """Columns of a table: ``name -> (kind 'f'|'i', minimum, maximum)``, finite and in range."""
    for name, (kind, low, high) in ranges.items():
        if name not in df.columns:
            raise CheckpointError(f"{path}: column '{name}' is missing")
        values = df[name]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            raise CheckpointError(f"{path}: column '{name}' has type {values.dtype}, expected numbers")
        check_array(values.to_numpy(), path, f"column {name}", kind=kind, minimum=low, maximum=high)
