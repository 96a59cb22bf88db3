"""Running the event loop: uvloop where it is installed (the relay's hot path is 1.5–2× faster)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# A relay reads up to 256 KiB at a time, and every read becomes a fresh ``bytes``. By
# default glibc serves allocations that large with mmap and unmaps them on free, and
# gives freed heap tops back to the kernel at 128 KiB: each read then costs an mmap, a
# munmap and page faults on every touched page. Measured on loopback, a freshly started
# agent moved about half the bytes per second of one whose heap had grown. Keeping such
# blocks in the heap, and up to 32 MiB of free heap mapped, removes that churn; idle
# memory is unchanged (it is bounded by what bursts allocated, not by connections).
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024


def tune_allocator() -> bool:
    """Keep large relay buffers in the heap (glibc only); True if applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, or no libc to load: leave the defaults
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_ok: bool = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_ok: bool = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return mmap_ok and trim_ok


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(stop: Callable[[int], None]) -> None:
    """Call ``stop(signum)`` on the running loop for each SIGTERM (what systemd sends)
    and SIGINT (Ctrl-C), instead of dying with the signal or raising KeyboardInterrupt
    wherever the loop happens to be: the caller shuts down gracefully and exits 0.

    Does nothing where the loop cannot own signals (Windows, a thread other than main).
    """
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop, sig)


def run(coro: Coroutine[Any, Any, T]) -> T:
    tune_allocator()
    try:
        import uvloop
    except ImportError:  # Windows, or installed without it
        return asyncio.run(coro)
    return uvloop.run(coro)
