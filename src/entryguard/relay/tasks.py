"""Background tasks with an owner.

The event loop holds only a weak reference to a task: one its creator drops can be
collected before it finishes, and its exception surfaces, if ever, as "Task exception
was never retrieved" whenever the garbage collector gets to it. A ``TaskSet`` holds
each task until it is done, logs an unexpected exception the moment it happens, and
cancels what is left when its owner closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


class TaskSet:
    __slots__ = ("_log", "_tasks")

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.error("task %s failed", task.get_name(), exc_info=exc)

    def cancel(self) -> None:
        """Cancel every task still running (each leaves the set once it has unwound)."""
        for task in tuple(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """Cancel every task still running and wait until they have unwound."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
