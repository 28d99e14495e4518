"""The JSON file that describes a saved model part (format name and version), read with clear errors."""

from __future__ import annotations

import json
from pathlib import Path


def read_meta(path: str | Path, fmt: str, version: int, what: str) -> dict:
    """The JSON object at ``path``, which must be a ``fmt`` file of at most ``version`` (``what``: for errors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {what} here")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable {what} ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt or meta.get("version", 0) > version:
        raise ValueError(f"{path}: not a version-{version} {fmt} file")
    return meta
