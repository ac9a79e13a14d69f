"""Queues are part of the ordered shutdown: consumers drain what is queued, then stop."""

from __future__ import annotations

import asyncio
import logging

import pytest

import anycore


def test_background_consumers_drain_the_queue_before_tasks_are_cancelled() -> None:
    consumed: list[int] = []
    report: list[anycore.ShutdownReport] = []

    async def consumer(queue: anycore.Queue[int]) -> None:
        async for item in queue:  # ends when the queue is closed and empty
            await asyncio.sleep(0)
            consumed.append(item)

    async def main() -> None:
        queue: anycore.Queue[int] = anycore.Queue(maxsize=0)
        anycore.spawn(consumer, queue, name="consumer")
        for i in range(500):
            queue.put_nowait(i)
        runtime = anycore.current_runtime()
        assert runtime is not None
        report.append(runtime.report)
        # main returns with the items still queued

    anycore.run(main)
    assert consumed == list(range(500))
    steps = [(s.name, s.outcome) for s in report[0].steps]
    assert ("anycore.queues", "done") in steps


def test_a_queue_nobody_consumes_does_not_hold_shutdown_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kept: list[anycore.Queue[int]] = []

    async def main() -> None:
        queue: anycore.Queue[int] = anycore.Queue()
        for i in range(7):
            queue.put_nowait(i)
        kept.append(queue)

    with caplog.at_level(logging.WARNING, logger="anycore.queues"):
        anycore.run(main)
    assert "7 queued item(s) in 1 queue(s) were not consumed at shutdown" in caplog.text
    queue = kept[0]
    assert queue.closed
    assert [queue.get_nowait() for _ in range(7)] == list(range(7))  # handed back


def test_an_actor_handles_what_is_in_its_mailbox_at_shutdown() -> None:
    handled: list[int] = []

    async def main() -> None:
        actor = anycore.Actor(handled.append, mailbox_size=0).start()
        for i in range(50):
            actor.send_nowait(i)

    anycore.run(main)
    assert handled == list(range(50))
