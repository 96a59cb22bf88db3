"""TaskSet: every background task held until done, its failure logged, cancelled on close."""

from __future__ import annotations

import asyncio
import logging

import pytest

from entryguard.relay.tasks import TaskSet

log = logging.getLogger("tests.tasks")


async def test_a_finished_task_leaves_the_set_and_its_failure_is_logged_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = TaskSet(log)

    async def fail() -> None:
        raise RuntimeError("boom")

    async def succeed() -> int:
        return 1

    with caplog.at_level(logging.ERROR, "tests.tasks"):
        tasks.spawn(fail(), name="failing")
        tasks.spawn(succeed())
        assert len(tasks) == 2
        for _ in range(3):
            await asyncio.sleep(0)
    assert len(tasks) == 0
    [record] = caplog.records
    assert record.getMessage() == "task failing failed"
    assert record.exc_info is not None and str(record.exc_info[1]) == "boom"


async def test_close_cancels_what_runs_and_a_cancellation_is_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = TaskSet(log)
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = tasks.spawn(forever())
    await started.wait()
    with caplog.at_level(logging.ERROR, "tests.tasks"):
        await tasks.close()
    assert task.cancelled() and len(tasks) == 0
    assert caplog.records == []
    await tasks.close()  # nothing left: returns at once


async def test_cancel_from_synchronous_code() -> None:
    tasks = TaskSet(log)
    task = tasks.spawn(asyncio.sleep(60))
    await asyncio.sleep(0)
    tasks.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(tasks) == 0
