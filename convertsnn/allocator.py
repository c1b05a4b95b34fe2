"""Allocator settings for CPU runs, set from inside the process.

A spiking network allocates and frees tensors of ``T*B`` samples every step. With its default
settings glibc serves blocks above a (dynamic, at most 32 MiB) threshold with fresh ``mmap``
calls and returns them on ``free``, so every large tensor costs page faults again. Told to serve
them from the heap and to keep freed memory, it reuses the pages instead. The command line calls
:func:`keep_freed_memory` at start-up; measured effect in ``docs/performance.md``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Have glibc serve blocks up to ``limit`` bytes from the heap and keep up to ``limit`` bytes
    of freed memory for reuse (``mallopt``). Returns whether it applied: not without glibc, and
    not when the glibc variables of :data:`ENVIRONMENT` are set (the user's choice wins). The
    cost: the process's resident memory stays near its peak."""
    if any(name in os.environ for name in ENVIRONMENT):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, limit)) and bool(mallopt(M_TRIM_THRESHOLD, limit))
