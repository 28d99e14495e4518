"""Hand freed memory back to the system after a step that made many temporary arrays.

Arrow's allocator keeps freed pages for reuse, and glibc's malloc keeps freed
heap (arrays below its mmap threshold, 32 MB at most, come from the heap), so a
process's resident memory stays at the peak of a step long after it is done:
loading a 100 M-row checkpoint's conversation model left 300 MB of freed heap
resident. The next step's peak then comes on top of it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import pyarrow as pa


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Return what Arrow's pool and the C heap hold freed to the system (glibc only; elsewhere Arrow's)."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
