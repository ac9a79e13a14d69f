"""ThreadSafeCondition: a condition variable shared by tasks and plain threads."""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest

from anycore import RuntimeStateError, ThreadSafeCondition


async def test_a_thread_produces_and_a_task_consumes() -> None:
    cond = ThreadSafeCondition()
    items: list[int] = []

    def producer() -> None:
        for i in range(200):
            with cond:
                items.append(i)
                cond.notify()

    thread = threading.Thread(target=producer)
    thread.start()
    got: list[int] = []
    with anyio.fail_after(20):
        async with cond:
            while len(got) < 200:
                await cond.wait_for(lambda: items)
                got.extend(items)
                items.clear()
    await asyncio.to_thread(thread.join, 10)
    assert got == list(range(200))


async def test_a_task_produces_and_threads_consume() -> None:
    cond = ThreadSafeCondition()
    items: list[int] = []
    got: list[int] = []
    done = threading.Event()

    def consumer() -> None:
        with cond:
            while not done.is_set() or items:
                if not cond.sync_wait_for(lambda: items or done.is_set(), timeout=10):
                    return
                got.extend(items)
                items.clear()

    threads = [threading.Thread(target=consumer) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(100):
        async with cond:
            items.append(i)
            cond.notify()
        await asyncio.sleep(0)
    async with cond:
        done.set()
        cond.notify_all()
    for t in threads:
        await asyncio.to_thread(t.join, 10)
    assert sorted(got) == list(range(100))


async def test_a_cancelled_waiter_gives_the_lock_back_and_passes_the_notification_on() -> None:
    cond = ThreadSafeCondition()
    woken = asyncio.Event()

    async def waiter(mark: asyncio.Event | None) -> None:
        async with cond:
            await cond.wait()
            if mark is not None:
                mark.set()

    first = asyncio.create_task(waiter(None))
    second = asyncio.create_task(waiter(woken))
    while cond.statistics().tasks_waiting < 2:
        await asyncio.sleep(0)
    async with cond:
        cond.notify()  # meant for the first...
        first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    with anyio.fail_after(10):
        await woken.wait()  # the notification reached the second waiter
    await second
    assert not cond.lock.locked()


async def test_a_cancel_scope_around_wait_leaves_the_lock_free() -> None:
    cond = ThreadSafeCondition()
    with anyio.move_on_after(0.01) as scope:
        async with cond:
            await cond.wait()
    assert scope.cancelled_caught
    assert not cond.lock.locked()


def test_sync_wait_times_out_and_notify_needs_the_lock() -> None:
    cond = ThreadSafeCondition()
    with cond:
        assert cond.sync_wait(0.01) is False
        assert cond.lock.locked()
    with pytest.raises(RuntimeStateError, match="needs the condition's lock"):
        cond.notify()


async def test_sync_wait_inside_the_loop_is_refused() -> None:
    cond = ThreadSafeCondition()
    async with cond:
        with pytest.raises(RuntimeStateError, match="would stall it"):
            cond.sync_wait(0)
