"""Checks on outputs made before the work starts, so a run does not fail after minutes of sampling.

``check_output_file``: ``out=`` names a file in a directory we can write in.
``check_checkpoint_dir``: ``out=`` of ``train`` may be new, empty, or a checkpoint (replaced only with
``overwrite=true``); anything else holds the user's files and is refused, never deleted.
``check_free_space``: the file system has room for the estimated output.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from servegen_ml.core.errors import OutputError

MANIFEST = "manifest.json"


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _check_parent(path: Path, key: str) -> None:
    ancestor = _existing_ancestor(path.parent)
    if not ancestor.is_dir():
        raise OutputError(f"{key}={path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{key}={path}: cannot write in {ancestor} (permission denied)")


def check_output_file(path: str | os.PathLike, key: str = "out") -> Path:
    """``path`` as a Path, after checking it can become a file; raises :class:`OutputError`."""
    raw = str(path)
    path = Path(raw)
    if raw.endswith(("/", os.sep)) or path.name in ("", ".", "..") or path.is_dir():
        raise OutputError(f"{key}={raw}: is a directory; name a file, e.g. {key}={path / 'workload.parquet'}")
    _check_parent(path, key)
    return path


def check_output_dir(path: str | os.PathLike, key: str = "out") -> Path:
    """``path`` after checking files can be written into it (it may exist); raises :class:`OutputError`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{key}={path}: is a file; name a directory for the outputs")
    # An existing directory must itself be writable; a new one, its nearest existing ancestor.
    _check_parent(path / "file" if path.is_dir() else path, key)
    return path


def check_checkpoint_dir(path: str | os.PathLike, overwrite: bool, key: str = "out") -> Path:
    """``path`` (absolute) after checking a checkpoint may be written there; raises :class:`OutputError`."""
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        raise OutputError(f"{key}={path}: is a file; a checkpoint is a directory (nothing was written)")
    if path.is_dir() and any(path.iterdir()):
        if not (path / MANIFEST).is_file():
            raise OutputError(
                f"{key}={path}: holds files that are not a servegen-ml checkpoint; refusing to replace it "
                "(nothing was deleted). Name a new or empty directory."
            )
        if not overwrite:
            raise OutputError(
                f"{key}={path}: holds a checkpoint already; pass overwrite=true to replace it, "
                "or name a new directory"
            )
    _check_parent(path, key)
    return path


def check_free_space(path: str | os.PathLike, need_bytes: float, key: str = "out") -> None:
    """Refuse when the file system of ``path`` has less free space than ``need_bytes`` (an estimate)."""
    ancestor = _existing_ancestor(Path(path).parent)
    free = shutil.disk_usage(ancestor).free
    if need_bytes > free:
        raise OutputError(
            f"{key}={path}: the output needs about {need_bytes / 1e9:.2f} GB and {ancestor} has "
            f"{free / 1e9:.2f} GB free; free some space or write elsewhere"
        )
