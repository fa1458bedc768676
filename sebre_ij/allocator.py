"""glibc's allocator told to keep freed memory while the model runs: an opt-in of the command line.

glibc serves blocks over its mmap threshold (at most 32 MB) with mmap and unmaps them when they are
freed. A light Mask R-CNN's mask head puts out more than that per batch of tiles, so every model
call faulted those pages in again, seconds of system time per run (benchmarks/README.md).
`kept_heap()` keeps freed blocks in the heap while it holds, then puts glibc's settings back and
returns the memory to the system.

The settings belong to the whole process. Holders are counted under a lock: the first to enter
sets them and the last to leave restores them, so calls that overlap (threads of one Dask worker)
never undo each other. glibc has no call that reads its settings, so what is restored is what the
process started with: the MALLOC_MMAP_MAX_ and MALLOC_TRIM_THRESHOLD_ environment variables where
set, else glibc's defaults. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
import threading
from collections.abc import Iterator

# glibc's mallopt parameters and their defaults (malloc.h, mallopt(3))
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}
ENVIRONMENT = {M_MMAP_MAX: "MALLOC_MMAP_MAX_", M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_"}
KEPT = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30}

_lock = threading.Lock()
_holders = 0


def _glibc() -> ctypes.CDLL | None:
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        return ctypes.CDLL(None)
    return None


def starting_values() -> dict[int, int]:
    """The settings the process started with: from glibc's environment variables, else its defaults."""
    values = dict(DEFAULTS)
    for param, name in ENVIRONMENT.items():
        text = os.environ.get(name, "")
        if text.isdigit():
            values[param] = int(text)
    return values


@contextlib.contextmanager
def kept_heap() -> Iterator[bool]:
    """Freed memory stays in the heap while any holder is inside; yields whether glibc was told."""
    global _holders
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _lock:
        _holders += 1
        if _holders == 1:
            for param, value in KEPT.items():
                libc.mallopt(param, value)
    try:
        yield True
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                for param, value in starting_values().items():
                    libc.mallopt(param, value)
                libc.malloc_trim(0)
