"""Progress bars for long benchmark work: tqdm on a terminal, silent otherwise or when quiet."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, quiet: bool = False, total: int | None = None) -> Iterator[T]:
    """``items`` with a progress bar on stderr, unless ``quiet`` or stderr is not a terminal."""
    disable = quiet or not sys.stderr.isatty()
    return iter(tqdm(items, desc=desc, total=total, disable=disable, leave=False, file=sys.stderr))
