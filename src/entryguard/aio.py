"""Running the event loop: uvloop where it is installed (the relay's hot path is 1.5–2× faster)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # Windows, or installed without it
        return asyncio.run(coro)
    return uvloop.run(coro)
