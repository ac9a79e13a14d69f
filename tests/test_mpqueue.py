"""Tests for the process queues, with real (spawned) child processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from anycore._workers._mpqueue import ChildQueue, JoinableProcessQueue, ProcessQueue
from anycore.errors import QueueClosed, QueueEmpty, QueueFull, TooManyReleases

sys.path.insert(0, str(Path(__file__).parent))
import _mpqueue_children as children

CTX = multiprocessing.get_context("spawn")


async def reap(*procs: Any) -> None:
    for p in procs:
        await anyio.to_thread.run_sync(p.join, 20)
        assert p.exitcode == 0, p.exitcode


async def test_child_produces_parent_consumes_in_order_until_close() -> None:
    async with ProcessQueue[int](maxsize=8) as q:
        p = CTX.Process(target=children.produce_then_close, args=(q, 300))
        p.start()
        got = [item async for item in q]
        await reap(p)
    assert got == list(range(300))
    assert q.closed
    with pytest.raises(QueueClosed):
        await q.put(1)


async def test_joinable_jobs_to_child_workers_and_results_back() -> None:
    async with JoinableProcessQueue[int](maxsize=16) as jobs, ProcessQueue[int](0) as results:
        workers = [
            CTX.Process(target=children.double_worker, args=(jobs, results)) for _ in range(2)
        ]
        for w in workers:
            w.start()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        tick_task = asyncio.ensure_future(ticker())
        for i in range(200):
            await jobs.put(i)  # bounded: waits off the loop when full
        await jobs.join()  # waits off the loop
        tick_task.cancel()
        assert ticks > 0  # the loop kept running while we waited
        jobs.close()
        await reap(*workers)
        out = [results.get_nowait() for _ in range(200)]
    assert sorted(out) == [i * 2 for i in range(200)]


async def test_parent_and_child_compete_for_items_nothing_lost() -> None:
    # The child sits blocked in get() holding the queue's read lock, so the
    # parent's get must wait off the loop (the helper-thread path) too.
    async with ProcessQueue[int](0) as q, ProcessQueue[Any](0) as results:
        p = CTX.Process(target=children.collect_until_closed, args=(q, results))
        p.start()
        with anyio.fail_after(20):
            assert await results.get() == "ready"  # about to block in get()
        mine: list[int] = []

        async def parent_consumer() -> None:
            async for item in q:
                mine.append(item)

        consumer = asyncio.ensure_future(parent_consumer())
        for i in range(100):
            await q.put(i)
        q.close()
        with anyio.fail_after(20):
            await consumer
            tag, theirs = await results.get()
        await reap(p)
    assert tag == "child"
    assert sorted(mine + theirs) == list(range(100))
    assert mine == sorted(mine)
    assert theirs == sorted(theirs)


async def test_close_from_child_wakes_parent_get() -> None:
    async with ProcessQueue[int](4) as q:
        getter = asyncio.ensure_future(q.get())
        await asyncio.sleep(0)
        p = CTX.Process(target=children.close_it, args=(q,))
        p.start()
        with anyio.fail_after(20), pytest.raises(QueueClosed):
            await getter
        await reap(p)


async def test_nowait_bounded_and_cancelled_get_leaves_no_reader() -> None:
    async with ProcessQueue[int](2) as q:
        with pytest.raises(QueueEmpty):
            q.get_nowait()
        waiter = asyncio.ensure_future(q.get())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        # Watching the pipe must not make the shared read end non-blocking
        # (uvloop does that to watched fds; children would then see EAGAIN).
        assert os.get_blocking(q._mpq._reader.fileno())
        q.put_nowait(1)
        q.put_nowait(2)
        with pytest.raises(QueueFull):
            q.put_nowait(3)
        blocked = asyncio.ensure_future(q.put(3))
        await asyncio.sleep(0)
        assert not blocked.done()
        stats = q.statistics()
        assert (stats.current_size, stats.max_size, stats.closed) == (2, 2, False)
        assert (stats.tasks_waiting_get, stats.tasks_waiting_put) == (0, 1)
        with anyio.fail_after(10):
            assert await q.get() == 1
            await blocked
            assert q.statistics().tasks_waiting_put == 0
            assert await q.get() == 2
            assert await q.get() == 3


async def test_joinable_task_done_too_many_and_sync_side_in_thread() -> None:
    async with JoinableProcessQueue[str](4) as q:
        with pytest.raises(TooManyReleases):
            q.task_done()
        side = q.sync
        assert isinstance(side, ChildQueue)

        def thread_consumer() -> list[str]:
            got = []
            for item in side:
                got.append(item)
                side.task_done()
            return got

        consumer = asyncio.ensure_future(anyio.to_thread.run_sync(thread_consumer))
        for word in ("a", "b", "c"):
            await q.put(word)
        with anyio.fail_after(10):
            await q.join()
        q.close()
        with anyio.fail_after(10):
            assert await consumer == ["a", "b", "c"]


def test_child_side_timeouts() -> None:
    q: ProcessQueue[int] = ProcessQueue(1)
    side = q.sync
    with pytest.raises(QueueEmpty):
        side.get(timeout=0.01)
    side.put(1)
    with pytest.raises(QueueFull):
        side.put(2, timeout=0.01)
    with pytest.raises(QueueFull):
        side.put_nowait(2)
    assert side.get() == 1
    side.close()
    with pytest.raises(QueueClosed):
        side.put(3)
    with pytest.raises(QueueClosed):
        side.get()
    asyncio.run(q.aclose())


async def test_get_while_another_reader_holds_the_read_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Simulates another process in the middle of a blocking get(): it holds
    # the queue's cross-process read lock, which no fd can signal.  The get
    # must wait in a helper thread (the loop keeps running), and a get that
    # is cancelled there must not lose the item it was about to receive.
    entered: list[threading.Event] = []
    original = ProcessQueue._blocking_get

    def instrumented(self: Any, cancelled: threading.Event) -> None:
        entered[-1].set()
        original(self, cancelled)

    monkeypatch.setattr(ProcessQueue, "_blocking_get", instrumented)

    async def in_helper_thread() -> None:
        entered.append(threading.Event())
        ok = await anyio.to_thread.run_sync(entered[-1].wait, 10)
        assert ok

    async with ProcessQueue[int](0) as q:
        rlock = q._mpq._rlock
        assert rlock.acquire(timeout=5)
        try:
            q.put_nowait(1)
            with anyio.fail_after(10):
                while not q._mpq._reader.poll():  # the feeder thread flushes
                    await asyncio.sleep(0.001)
            waiting = asyncio.ensure_future(in_helper_thread())
            first = asyncio.ensure_future(q.get())
            await waiting
            assert not first.done()
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            waiting = asyncio.ensure_future(in_helper_thread())
            second = asyncio.ensure_future(q.get())
            await waiting
            assert not second.done()
        finally:
            rlock.release()
        with anyio.fail_after(10):
            assert await second == 1
        q.put_nowait(2)
        with anyio.fail_after(10):
            assert await q.get() == 2

        # Cancelled just as the helper thread receives the item: the item is
        # kept for the next get.
        assert rlock.acquire(timeout=5)
        q.put_nowait(3)
        with anyio.fail_after(10):
            while not q._mpq._reader.poll():
                await asyncio.sleep(0.001)
        waiting = asyncio.ensure_future(in_helper_thread())
        third = asyncio.ensure_future(q.get())
        await waiting
        rlock.release()
        third.cancel()
        with pytest.raises(asyncio.CancelledError):
            await third
        with anyio.fail_after(10):
            assert await q.get() == 3


async def test_readiness_wait_without_proc_falls_back_to_a_thread() -> None:
    async with ProcessQueue[int](0) as q:
        q._watch = -1  # as on a system without /proc
        getter = asyncio.ensure_future(q.get())
        await asyncio.sleep(0)
        await anyio.to_thread.run_sync(q.sync.put, 42)
        with anyio.fail_after(10):
            assert await getter == 42


async def test_with_anycore_child_processes() -> None:
    # anycore's ChildProcess sends its arguments over its own channel, not
    # through multiprocessing's spawning path; the queues still travel.
    from anycore import ChildProcess

    async with JoinableProcessQueue[int](4) as jobs, ProcessQueue[int](0) as results:
        async with ChildProcess(children.double_worker, jobs, results) as child:
            for i in range(20):
                await jobs.put(i)
            with anyio.fail_after(20):
                await jobs.join()
            jobs.close()
            with anyio.fail_after(20):
                await child.result()
        out = sorted([await results.get() for _ in range(20)])
    assert out == [i * 2 for i in range(20)]

    q: ProcessQueue[int] = ProcessQueue(8)
    async with q, ChildProcess(children.produce_then_close, q, 50) as child2:
        with anyio.fail_after(20):
            got = [item async for item in q]
            await child2.result()
    assert got == list(range(50))
