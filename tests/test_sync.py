"""Tests for anycore's synchronisation primitives."""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest
import trio

import anycore
from _support import settle, wait_until
from anycore._core._sync import (
    BoundedSemaphore,
    CapacityLimiter,
    Condition,
    Event,
    Lock,
    RLock,
    Semaphore,
    ThreadSafeEvent,
    ThreadSafeLock,
    ThreadSafeSemaphore,
)
from anycore.errors import AnycoreError, RuntimeStateError, TooManyReleases, WouldBlock


def test_anyio_primitives_are_reexported_unchanged() -> None:
    assert Lock is anyio.Lock
    assert Semaphore is anyio.Semaphore
    assert Event is anyio.Event
    assert Condition is anyio.Condition
    assert CapacityLimiter is anyio.CapacityLimiter
    assert anycore.Lock is anyio.Lock
    assert anycore.RLock is RLock


# -- RLock ------------------------------------------------------------------------


async def test_rlock_is_reentrant_per_task_and_excludes_others() -> None:
    lock = RLock()
    order: list[str] = []
    async with lock:
        async with lock:
            assert lock.level == 2

            async def other() -> None:
                async with lock:
                    order.append("other")

            t = asyncio.ensure_future(other())
            await settle()
            assert order == []
        assert lock.level == 1
        await settle()
        assert order == []  # still held once
    await t
    assert order == ["other"]
    assert not lock.locked()


async def test_rlock_release_by_non_owner_and_nowait() -> None:
    lock = RLock()
    await lock.acquire()
    lock.acquire_nowait()

    async def intruder() -> None:
        with pytest.raises(RuntimeStateError):
            lock.release()
        with pytest.raises(WouldBlock):
            lock.acquire_nowait()

    await asyncio.ensure_future(intruder())
    lock.release()
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


def test_rlock_on_trio() -> None:
    async def main() -> int:
        lock = RLock()
        async with lock, lock:
            return lock.level

    assert trio.run(main) == 2


# -- BoundedSemaphore ----------------------------------------------------------------


async def test_bounded_semaphore_refuses_over_release() -> None:
    sem = BoundedSemaphore(2)
    async with sem:
        assert sem.value == 1
        sem.acquire_nowait()
        with pytest.raises(WouldBlock):
            sem.acquire_nowait()
        sem.release()
    assert sem.value == 2 == sem.max_value
    with pytest.raises(TooManyReleases) as info:
        sem.release()
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AnycoreError)
    assert sem.statistics().tasks_waiting == 0


async def test_bounded_semaphore_limits_concurrency() -> None:
    sem = BoundedSemaphore(2)
    running = 0
    peak = 0

    async def work() -> None:
        nonlocal running, peak
        async with sem:
            running += 1
            peak = max(peak, running)
            await settle(3)
            running -= 1

    await asyncio.gather(*(work() for _ in range(10)))
    assert peak == 2


# -- ThreadSafeEvent -------------------------------------------------------------------


async def test_threadsafe_event_set_from_thread_wakes_tasks() -> None:
    ev = ThreadSafeEvent()
    waiters = [asyncio.ensure_future(ev.wait()) for _ in range(3)]
    await settle()
    assert ev.statistics().tasks_waiting == 3
    await anyio.to_thread.run_sync(ev.set)
    await asyncio.gather(*waiters)
    assert ev.is_set()
    await ev.wait()  # already set


async def test_threadsafe_event_set_in_task_wakes_threads() -> None:
    ev = ThreadSafeEvent()
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(ev.sync_wait())) for _ in range(2)]
    for th in threads:
        th.start()
    await wait_until(lambda: ev.statistics().threads_waiting == 2)
    ev.set()
    for th in threads:
        await anyio.to_thread.run_sync(th.join, 10)
    assert results == [True, True]


async def test_threadsafe_event_timeout_clear_and_cancel() -> None:
    ev = ThreadSafeEvent()
    assert await anyio.to_thread.run_sync(ev.sync_wait, 0.01) is False
    assert ev.statistics().threads_waiting == 0
    waiter = asyncio.ensure_future(ev.wait())
    await settle()
    waiter.cancel()
    await settle()
    assert ev.statistics().tasks_waiting == 0
    with pytest.raises(RuntimeStateError):
        ev.sync_wait()
    ev.set()
    ev.clear()
    assert not ev.is_set()


# -- ThreadSafeLock / ThreadSafeSemaphore -----------------------------------------------


async def test_threadsafe_lock_excludes_threads_and_tasks() -> None:
    lock = ThreadSafeLock()
    counter = {"n": 0, "inside": 0, "peak": 0}
    rounds = 300

    def bump_sync() -> None:
        counter["inside"] += 1
        counter["peak"] = max(counter["peak"], counter["inside"])
        v = counter["n"]
        counter["n"] = v + 1
        counter["inside"] -= 1

    def thread_worker() -> None:
        for _ in range(rounds):
            with lock:
                bump_sync()

    async def task_worker() -> None:
        for _ in range(rounds):
            async with lock:
                counter["inside"] += 1
                counter["peak"] = max(counter["peak"], counter["inside"])
                v = counter["n"]
                await asyncio.sleep(0)  # hold the lock across a switch
                counter["n"] = v + 1
                counter["inside"] -= 1

    threads = [threading.Thread(target=thread_worker) for _ in range(2)]
    for th in threads:
        th.start()
    await asyncio.gather(*(task_worker() for _ in range(2)))
    for th in threads:
        await anyio.to_thread.run_sync(th.join, 30)
    assert counter["n"] == 4 * rounds
    assert counter["peak"] == 1
    assert not lock.locked()


async def test_threadsafe_lock_cancelled_waiter_does_not_leak_ownership() -> None:
    lock = ThreadSafeLock()
    await lock.acquire()
    waiter = asyncio.ensure_future(lock.acquire())
    await settle()
    lock.release()  # hands ownership to `waiter` ...
    waiter.cancel()  # ... which is cancelled before it runs
    await settle()
    assert waiter.cancelled()
    assert not lock.locked()  # the cancelled waiter passed it on (to nobody)
    lock.acquire_nowait()
    lock.release()
    with pytest.raises(TooManyReleases):
        lock.release()


async def test_threadsafe_lock_handoff_from_thread_to_cancelled_task() -> None:
    lock = ThreadSafeLock()
    lock.acquire_nowait()
    waiters = [asyncio.ensure_future(lock.acquire()) for _ in range(2)]
    await settle()
    waiters[0].cancel()
    await anyio.to_thread.run_sync(lock.release)
    await waiters[1]
    assert lock.locked()
    lock.release()
    assert not lock.locked()


async def test_threadsafe_semaphore_sync_timeout_and_fifo() -> None:
    sem = ThreadSafeSemaphore(1)
    sem.acquire_nowait()
    with pytest.raises(WouldBlock) as caught:
        sem.acquire_nowait()
    assert isinstance(caught.value, anyio.WouldBlock)
    assert await anyio.to_thread.run_sync(lambda: sem.sync_acquire(timeout=0.01)) is False
    assert await anyio.to_thread.run_sync(lambda: sem.sync_acquire(blocking=False)) is False
    order: list[str] = []

    def thread_waiter() -> None:
        sem.sync_acquire()
        order.append("thread")
        sem.release()

    th = threading.Thread(target=thread_waiter)
    th.start()
    await wait_until(lambda: sem.statistics().threads_waiting == 1)

    async def task_waiter() -> None:
        async with sem:
            order.append("task")

    t = asyncio.ensure_future(task_waiter())
    await settle()
    assert sem.statistics().tasks_waiting == 1
    sem.release()
    await t
    await anyio.to_thread.run_sync(th.join, 10)
    assert order == ["thread", "task"]  # FIFO across threads and tasks
    assert sem.value == 1
    sem.release()  # unbounded: allowed
    assert sem.value == 2


def test_threadsafe_semaphore_rejects_negative() -> None:
    with pytest.raises(ValueError):
        ThreadSafeSemaphore(-1)
    with pytest.raises(ValueError):
        BoundedSemaphore(-1)


async def test_rlock_statistics_name_the_owner_and_the_waiters() -> None:
    lock = RLock()
    assert lock.statistics().locked is False

    async def take_and_give_back() -> None:
        async with lock:
            pass

    async with lock, lock:
        waiter = asyncio.ensure_future(take_and_give_back())
        await settle()
        stats = lock.statistics()
        assert stats.locked
        assert stats.owner is not None
        assert stats.owner.id == anyio.get_current_task().id
        assert stats.tasks_waiting == 1
        assert lock.level == 2
    await waiter
    assert lock.statistics().tasks_waiting == 0
    assert not lock.statistics().locked
