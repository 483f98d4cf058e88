"""Keep freed CPU memory in the process while training, instead of returning it to the kernel.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and gives it back with ``munmap`` when it is freed. A training step on the CPU allocates and
frees tens of activation tensors of that size (the SOTA core's are 128 × 64 × 28 × 56 floats = 51 MiB),
so every step page-faults and zero-fills gigabytes of new pages. :func:`reuse_freed_memory` turns that
off for the duration of a ``with`` block (``mallopt``: no mmap blocks, no trimming of the heap), so
freed tensors are reused by the next step (the memory goes back with ``malloc_trim`` at the end);
the values computed are unchanged. Outside glibc (macOS,
Windows, musl) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import threading
from collections.abc import Iterator

__all__ = ["reuse_freed_memory"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# glibc's defaults, restored afterwards (the trim threshold's default is 128 KiB, M_MMAP_MAX's 65536)
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_KEEP_TRIM_THRESHOLD = 2**31 - 1  # an int: mallopt takes an int

_depth = 0  # active uses (trainers may run in several threads of one process)
_lock = threading.Lock()


def _libc() -> ctypes.CDLL | None:
    """glibc, or None (another platform or C library)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError outside glibc
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def _mallopt():
    """glibc's ``mallopt``, or None."""
    libc = _libc()
    return None if libc is None else libc.mallopt


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """While active, large freed blocks stay in the heap for reuse (glibc only; nested uses are fine).

    Args:
        enabled: False makes this a no-op (the trainer's ``reuse_cpu_memory=False``).

    Yields:
        Whether the allocator settings were changed (False outside glibc or when disabled).
    """
    global _depth
    libc = _libc() if enabled else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_TRIM_THRESHOLD)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)  # give the retained memory back
