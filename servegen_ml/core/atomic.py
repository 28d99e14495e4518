"""Atomic outputs: write beside the target, then rename, so an interrupted run leaves no half-written file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from servegen_ml.core.errors import OutputError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _create_file(tmp: Path) -> None:
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as for open()


def _create_dir(tmp: Path) -> None:
    os.mkdir(tmp, 0o777)


def _new_temp(path: Path, suffix: str, create: Callable[[Path], None], made: list[Path]) -> Path:
    """Create a temporary file or directory next to ``path``. Its name goes into ``made`` before it
    exists, so an interrupt (SIGTERM raised as an exception) at any point leaves nothing that the
    caller's cleanup of ``made`` does not know about."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        made.append(tmp)
        try:
            create(tmp)
            return tmp
        except FileExistsError:
            made.pop()  # someone else's: not ours to remove


def _remove(made: list[Path]) -> None:
    for tmp in made:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed."""
    path, made = Path(path), []
    try:
        tmp = _new_temp(path, ".tmp", _create_file, made)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(made)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it replaces ``path`` (an old one is removed)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file, not a directory; name a new directory (nothing was written)")
    made = []
    try:
        tmp = _new_temp(path, ".tmp", _create_dir, made)
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(made)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Temporary paths next to ``paths`` (same extensions), renamed onto them together on success.

    The renames happen under an exclusive lock on the directory, so two runs writing the same
    files leave one run's complete set (a file and its sidecar never come from different runs).
    On error every temporary path is removed and no target is touched.
    """
    targets = [Path(p) for p in paths]
    made: list[Path] = []
    try:
        tmps = [_new_temp(path, f".tmp{path.suffix}", _create_file, made) for path in targets]
        yield list(tmps)
        with _locked_directories({p.parent for p in targets}):
            for tmp, path in zip(tmps, targets):
                os.replace(tmp, path)
    except BaseException:
        _remove(made)
        raise


@contextlib.contextmanager
def _locked_directories(directories) -> Iterator[None]:
    fds = []
    try:
        for directory in sorted(str(d) for d in directories):  # a fixed order cannot deadlock
            fd = os.open(directory, os.O_RDONLY)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            os.close(fd)  # closing releases the lock
