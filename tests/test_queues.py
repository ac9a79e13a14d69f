"""Tests for anycore's task/thread queues (Queue, LifoQueue, PriorityQueue)."""

from __future__ import annotations

import asyncio
import queue as stdlib_queue
import sys
import threading
from typing import Any

import anyio
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from _support import settle, wait_until
from anycore._core._queues import DEFAULT_MAXSIZE, LifoQueue, PriorityQueue, Queue
from anycore.errors import (
    QueueClosed,
    QueueEmpty,
    QueueFull,
    RuntimeStateError,
    TooManyReleases,
)

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]


def start_thread(fn: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(("ok", fn(*args)))
        except BaseException as exc:
            box.append(("err", exc))

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


# -- basics ---------------------------------------------------------------------


async def test_fifo_order_and_sizes() -> None:
    q: Queue[int] = Queue(maxsize=3)
    assert q.maxsize == 3
    assert q.empty()
    assert not q.full()
    for i in range(3):
        await q.put(i)
    assert q.full()
    assert q.qsize() == 3
    with pytest.raises(QueueFull):
        q.put_nowait(9)
    assert [await q.get() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(QueueEmpty):
        q.get_nowait()


def test_default_is_bounded_and_zero_is_unbounded() -> None:
    q: Queue[int] = Queue()
    assert q.maxsize == DEFAULT_MAXSIZE
    for i in range(DEFAULT_MAXSIZE):
        q.put_nowait(i)
    with pytest.raises(QueueFull):
        q.put_nowait(0)
    u: Queue[int] = Queue(0)
    for i in range(DEFAULT_MAXSIZE * 3):
        u.put_nowait(i)
    assert not u.full()
    assert u.maxsize == 0


async def test_lifo() -> None:
    q: LifoQueue[int] = LifoQueue(10)
    for i in range(5):
        q.put_nowait(i)
    assert [q.get_nowait() for _ in range(5)] == [4, 3, 2, 1, 0]


async def test_priority_ties_keep_insertion_order_and_never_compare_data() -> None:
    q: PriorityQueue[tuple[int, dict[str, int]]] = PriorityQueue(0)
    items = [(2, {"a": 1}), (1, {"b": 1}), (2, {"c": 1}), (1, {"d": 1}), (0, {"e": 1})]
    for item in items:
        await q.put(item)
    out = [await q.get() for _ in items]
    assert out == [(0, {"e": 1}), (1, {"b": 1}), (1, {"d": 1}), (2, {"a": 1}), (2, {"c": 1})]
    # Items come back as the very objects that were put.
    assert out[0] is items[4]


async def test_priority_plain_items_are_their_own_priority() -> None:
    q: PriorityQueue[int] = PriorityQueue(0)
    for v in (5, 1, 3):
        q.put_nowait(v)
    assert [q.get_nowait() for _ in range(3)] == [1, 3, 5]


async def test_statistics() -> None:
    q: Queue[int] = Queue(1)
    q.put_nowait(1)
    putter = asyncio.ensure_future(q.put(2))
    await settle()
    st1 = q.statistics()
    assert st1.current_size == 1
    assert st1.max_size == 1
    assert st1.tasks_waiting_put == 1
    assert st1.unfinished_tasks == 1
    assert not st1.closed
    assert not st1.threaded
    with pytest.raises(AttributeError):
        st1.current_size = 3  # type: ignore[misc]
    assert q.get_nowait() == 1
    await putter
    assert q.statistics().unfinished_tasks == 2


async def test_task_done_and_join() -> None:
    q: Queue[int] = Queue(0)
    for i in range(3):
        q.put_nowait(i)
    joined = asyncio.ensure_future(q.join())
    await settle()
    assert not joined.done()
    for _ in range(3):
        q.get_nowait()
        await settle()
        assert not joined.done()
        q.task_done()
    await settle()
    assert joined.done()
    with pytest.raises(TooManyReleases) as info:
        q.task_done()
    assert isinstance(info.value, ValueError)
    await q.join()  # nothing unfinished: returns at once


# -- close ----------------------------------------------------------------------


async def test_close_drains_then_raises_and_iteration_ends() -> None:
    q: Queue[int] = Queue(10)
    for i in range(3):
        q.put_nowait(i)
    q.close()
    assert q.closed
    with pytest.raises(QueueClosed):
        await q.put(9)
    with pytest.raises(QueueClosed):
        q.put_nowait(9)
    assert isinstance(QueueClosed(), anyio.ClosedResourceError)
    got = [item async for item in q]
    assert got == [0, 1, 2]
    with pytest.raises(QueueClosed):
        await q.get()
    with pytest.raises(QueueClosed):
        q.get_nowait()
    q.close()  # idempotent


async def test_close_wakes_blocked_tasks() -> None:
    empty: Queue[int] = Queue(1)
    full: Queue[int] = Queue(1)
    full.put_nowait(0)
    getters = [asyncio.ensure_future(empty.get()) for _ in range(3)]
    putters = [asyncio.ensure_future(full.put(i)) for i in range(3)]
    await settle()
    assert empty.statistics().tasks_waiting_get == 3
    assert full.statistics().tasks_waiting_put == 3
    empty.close()
    full.close()
    results = await asyncio.gather(*getters, *putters, return_exceptions=True)
    assert all(isinstance(r, QueueClosed) for r in results)
    # What was in the closed queue is still there for a consumer.
    assert full.get_nowait() == 0


async def test_async_context_manager_closes() -> None:
    async with Queue[int](2) as q:
        await q.put(1)
    assert q.closed
    assert await q.get() == 1


# -- cancellation -----------------------------------------------------------------


async def test_getter_cancelled_as_it_is_handed_an_item_loses_nothing() -> None:
    q: Queue[str] = Queue(0)
    first = asyncio.ensure_future(q.get())
    second = asyncio.ensure_future(q.get())
    await settle()
    q.put_nowait("x")  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it runs
    await settle()
    assert first.cancelled()
    # The wake-up was passed on: the second getter got the item.
    assert second.done()
    assert second.result() == "x"


async def test_putter_cancelled_after_wakeup_passes_room_on() -> None:
    q: Queue[int] = Queue(1)
    q.put_nowait(0)
    p1 = asyncio.ensure_future(q.put(1))
    p2 = asyncio.ensure_future(q.put(2))
    await settle()
    assert q.get_nowait() == 0  # wakes p1
    p1.cancel()
    await settle()
    assert p1.cancelled()
    assert p2.done()
    assert q.get_nowait() == 2


async def test_no_item_lost_under_random_cancellation() -> None:
    q: Queue[int] = Queue(4)
    n = 2000
    received: list[int] = []

    async def consumer() -> None:
        while True:
            try:
                received.append(await q.get())
            except QueueClosed:
                return

    async def producer() -> None:
        for i in range(n):
            await q.put(i)

    consumers = [asyncio.ensure_future(consumer()) for _ in range(4)]
    prod = asyncio.ensure_future(producer())
    # Keep cancelling consumers at deterministic points and replacing them.
    k = 0
    while not prod.done():
        await asyncio.sleep(0)
        k += 1
        if k % 3 == 0:
            victim = consumers.pop(0)
            victim.cancel()
            consumers.append(asyncio.ensure_future(consumer()))
    await prod
    q.close()
    await asyncio.gather(*consumers, return_exceptions=True)
    assert sorted(received) == list(range(n))


# -- thread bridging -----------------------------------------------------------------


async def test_thread_producer_to_task_consumer() -> None:
    q: Queue[int] = Queue(8)
    n = 5000

    def produce() -> None:
        for i in range(n):
            q.sync_put(i)
        q.close()

    th, box = start_thread(produce)
    got = [item async for item in q]
    await anyio.to_thread.run_sync(th.join)
    assert box == [("ok", None)]
    assert got == list(range(n))
    assert q.statistics().threaded


async def _race_consumers(
    q: Queue[int], produce: Any, consume: Any, producers: int, taken: list[list[int]]
) -> list[int]:
    consumers = [start_thread(consume, out) for out in taken]
    feeding = [start_thread(produce, k) for k in range(producers)]

    def close_when_fed() -> None:
        for th, _ in feeding:
            th.join()
        q.close()

    closer, _ = start_thread(close_when_fed)
    with anyio.fail_after(30):
        on_loop = [item async for item in q]  # ends once closed and drained
        for th in [closer] + [th for th, _ in consumers]:
            await anyio.to_thread.run_sync(th.join)
    assert all(box == [("ok", None)] for _, box in consumers + feeding)
    return on_loop


@pytest.mark.parametrize("queue_class", [Queue, LifoQueue])
async def test_unbounded_thread_producers_task_and_thread_consumers_lose_nothing(
    queue_class: type[Queue[int]],
) -> None:
    # Unbounded queues in thread-safe mode take items on the loop without the
    # lock, racing the threads' locked takes: every item arrives exactly once.
    q: Queue[int] = queue_class(0)
    producers, per = 2, 50_000
    taken: list[list[int]] = [[], []]

    def produce(k: int) -> None:
        for i in range(per):
            q.sync_put(k * per + i)

    def consume(out: list[int]) -> None:
        for item in q.sync_iter():
            out.append(item)

    # Switch threads as often as possible: the race (a thread sees the last
    # item, the loop takes it before the thread pops it) needs a switch there.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        on_loop = await _race_consumers(q, produce, consume, producers, taken)
    finally:
        sys.setswitchinterval(interval)

    everything = on_loop + taken[0] + taken[1]
    assert len(everything) == producers * per
    assert sorted(everything) == list(range(producers * per))
    assert q.statistics().threaded


async def test_task_producer_to_thread_consumers() -> None:
    q: Queue[int] = Queue(8)
    n = 5000
    outs: list[list[int]] = [[], []]

    def consume(out: list[int]) -> None:
        for item in q.sync_iter():
            out.append(item)
            q.task_done()

    threads = [start_thread(consume, out)[0] for out in outs]
    for i in range(n):
        await q.put(i)
    await q.join()
    q.close()
    for th in threads:
        await anyio.to_thread.run_sync(th.join)
    assert sorted(outs[0] + outs[1]) == list(range(n))
    # Each consumer saw its items in FIFO order.
    assert outs[0] == sorted(outs[0])
    assert outs[1] == sorted(outs[1])


async def test_close_from_loop_wakes_thread_blocked_in_sync_put() -> None:
    # janus#237: close did not unblock a blocked synchronous put.
    q: Queue[int] = Queue(1)
    q.put_nowait(0)
    th, box = start_thread(q.sync_put, 1)
    await wait_until(lambda: q.statistics().threads_waiting_put == 1)
    q.close()
    await anyio.to_thread.run_sync(th.join, 10)
    assert not th.is_alive()
    assert box[0][0] == "err"
    assert isinstance(box[0][1], QueueClosed)


async def test_close_from_loop_wakes_thread_blocked_in_sync_get() -> None:
    q: Queue[int] = Queue(1)
    th, box = start_thread(q.sync_get)
    await wait_until(lambda: q.statistics().threads_waiting_get == 1)
    q.close()
    await anyio.to_thread.run_sync(th.join, 10)
    assert box[0][0] == "err"
    assert isinstance(box[0][1], QueueClosed)


async def test_close_from_thread_wakes_blocked_tasks() -> None:
    q: Queue[int] = Queue(1)
    getter = asyncio.ensure_future(q.get())
    await settle()
    await anyio.to_thread.run_sync(q.close)
    with pytest.raises(QueueClosed):
        await getter
    q2: Queue[int] = Queue(1)
    q2.put_nowait(0)
    putter = asyncio.ensure_future(q2.put(1))
    await settle()
    await anyio.to_thread.run_sync(q2.close)
    with pytest.raises(QueueClosed):
        await putter
    assert q2.get_nowait() == 0


async def test_thread_get_wakes_task_putter_and_vice_versa() -> None:
    q: Queue[int] = Queue(1)
    q.put_nowait(0)
    putter = asyncio.ensure_future(q.put(1))
    await settle()
    assert await anyio.to_thread.run_sync(q.sync_get) == 0
    await putter
    assert q.get_nowait() == 1
    getter = asyncio.ensure_future(q.get())
    await settle()
    await anyio.to_thread.run_sync(q.sync_put, 5)
    assert await getter == 5


async def test_thread_timeouts() -> None:
    q: Queue[int] = Queue(1)

    def in_thread() -> list[str]:
        seen = []
        try:
            q.sync_get(timeout=0.01)
        except QueueEmpty:
            seen.append("empty")
        try:
            q.sync_get(block=False)
        except QueueEmpty:
            seen.append("empty-nowait")
        q.sync_put(1, timeout=0.01)
        try:
            q.sync_put(2, timeout=0.01)
        except QueueFull:
            seen.append("full")
        try:
            q.sync.put_nowait(2)
        except QueueFull:
            seen.append("full-nowait")
        return seen

    seen = await anyio.to_thread.run_sync(in_thread)
    assert seen == ["empty", "empty-nowait", "full", "full-nowait"]
    st1 = q.statistics()
    assert st1.threads_waiting_get == st1.threads_waiting_put == 0


async def test_sync_call_that_would_block_the_loop_is_refused() -> None:
    q: Queue[int] = Queue(1)
    with pytest.raises(RuntimeStateError):
        q.sync_get()
    q.sync_put(1)  # does not block: allowed on the loop thread
    with pytest.raises(RuntimeStateError):
        q.sync_put(2)
    assert q.sync_get() == 1


async def test_sync_view_is_queue_shaped_and_joins() -> None:
    q: Queue[int] = Queue(4)
    view = q.sync

    def worker() -> int:
        total = 0
        for item in view:
            total += item
            view.task_done()
        return total

    th, box = start_thread(worker)

    def feed() -> None:
        for i in range(100):
            view.put(i)
        view.join()
        assert view.qsize() == 0
        assert view.empty()
        assert not view.full()
        view.close()

    await anyio.to_thread.run_sync(feed)
    await anyio.to_thread.run_sync(th.join, 10)
    assert box == [("ok", sum(range(100)))]


def test_queue_created_outside_a_loop_used_by_threads_then_loop() -> None:
    q: Queue[int] = Queue(0)
    th, _ = start_thread(lambda: [q.sync_put(i) for i in range(10)])
    th.join(10)

    async def main() -> list[int]:
        q.close()
        return [item async for item in q]

    assert asyncio.run(main()) == list(range(10))


def test_thread_join_and_task_done_across_threads() -> None:
    q: Queue[int] = Queue(0)
    for i in range(5):
        q.sync_put(i)
    done = threading.Event()

    def worker() -> None:
        for _ in range(5):
            q.sync_get()
            q.task_done()
        done.set()

    th, _ = start_thread(worker)
    assert q.sync_join(timeout=10)
    th.join(10)
    assert done.is_set()
    assert q.sync_join(timeout=0)


def test_sync_join_times_out() -> None:
    q: Queue[int] = Queue(0)
    q.sync_put(1)
    assert q.sync_join(timeout=0.01) is False
    assert q.statistics().unfinished_tasks == 1


def test_stdlib_style_worker_loop_with_blocking_threads_and_cancellation_free_loop() -> None:
    # Several threads on both sides, the loop in the middle relaying.
    inbound: Queue[int] = Queue(16)
    outbound: Queue[int] = Queue(16)
    n = 3000
    results: stdlib_queue.SimpleQueue[int] = stdlib_queue.SimpleQueue()

    async def relay() -> None:
        async for item in inbound:
            await outbound.put(item * 2)
        outbound.close()

    def produce(start: int) -> None:
        for i in range(start, n, 2):
            inbound.sync_put(i)

    def consume() -> None:
        for item in outbound.sync_iter():
            results.put(item)

    async def main() -> None:
        producers = [start_thread(produce, s)[0] for s in (0, 1)]
        consumers = [start_thread(consume)[0] for _ in range(2)]
        relay_task = asyncio.ensure_future(relay())
        for th in producers:
            await anyio.to_thread.run_sync(th.join)
        inbound.close()
        await relay_task
        for th in consumers:
            await anyio.to_thread.run_sync(th.join)

    asyncio.run(main())
    out = sorted(results.get_nowait() for _ in range(results.qsize()))
    assert out == [i * 2 for i in range(n)]


def test_queue_used_only_from_threads() -> None:
    # No loop involved at all: the sync API alone is a thread-safe queue.
    q: Queue[int] = Queue(2)
    th, box = start_thread(lambda: [q.sync_get() for _ in range(3)])
    for i in range(3):
        q.sync_put(i)
    th.join(10)
    assert box == [("ok", [0, 1, 2])]


# -- hypothesis: close semantics with concurrent producers and consumers ---------------


class QueueMachine(RuleBasedStateMachine):
    """Drives one queue from one loop, deterministically (no threads, no timers).

    Models: successful puts in order; gets in order; close.  Checks FIFO,
    conservation (put == got + held), and that close leaves nobody blocked.
    """

    loop_factory: Any = staticmethod(asyncio.new_event_loop)

    def __init__(self) -> None:
        super().__init__()
        self.loop = self.loop_factory()
        self.q: Queue[int] = self.loop.run_until_complete(self._make())
        self.put_order: list[int] = []
        self.got: list[int] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.next_value = 0
        self.closed = False
        self.closed_failures = 0

    async def _make(self) -> Queue[int]:
        return Queue(2)

    def settle(self) -> None:
        self.loop.run_until_complete(settle(8))

    def _value(self) -> int:
        self.next_value += 1
        return self.next_value

    async def _putter(self, v: int) -> None:
        try:
            await self.q.put(v)
        except QueueClosed:
            self.closed_failures += 1
            return
        self.put_order.append(v)

    async def _getter(self) -> None:
        try:
            v = await self.q.get()
        except QueueClosed:
            self.closed_failures += 1
            return
        self.got.append(v)

    @rule()
    def start_putter(self) -> None:
        self.tasks.append(self.loop.create_task(self._putter(self._value())))
        self.settle()

    @rule()
    def start_getter(self) -> None:
        self.tasks.append(self.loop.create_task(self._getter()))
        self.settle()

    def in_loop(self, fn: Any) -> Any:
        async def call() -> Any:
            return fn()

        return self.loop.run_until_complete(call())

    @rule()
    def put_nowait(self) -> None:
        self.in_loop(self._put_nowait)

    def _put_nowait(self) -> None:
        v = self._value()
        try:
            self.q.put_nowait(v)
        except QueueFull:
            assert not self.closed
            assert self.q.full()
            return
        except QueueClosed:
            assert self.closed
            return
        assert not self.closed
        self.put_order.append(v)

    @rule()
    def get_nowait(self) -> None:
        self.in_loop(self._get_nowait)

    def _get_nowait(self) -> None:
        try:
            self.got.append(self.q.get_nowait())
        except QueueEmpty:
            assert not self.closed
        except QueueClosed:
            assert self.closed
            assert self.q.empty()

    @precondition(lambda self: any(not t.done() for t in self.tasks))
    @rule(data=st.data())
    def cancel_one(self, data: st.DataObject) -> None:
        pending = [t for t in self.tasks if not t.done()]
        victim = data.draw(st.sampled_from(pending))
        how = data.draw(st.sampled_from(["plain", "after-put", "after-get"]))

        def act() -> None:
            # A put or get in the same loop step wakes a waiter that the
            # cancellation then hits before it runs.
            if how == "after-put":
                self._put_nowait()
            elif how == "after-get":
                self._get_nowait()
            victim.cancel()

        self.in_loop(act)
        self.settle()

    @rule(n=st.integers(min_value=1, max_value=3))
    def wake_then_cancel_getter(self, n: int) -> None:
        # The risky interleaving: an item arrives and its getter is cancelled
        # before it runs.
        getters = [self.loop.create_task(self._getter()) for _ in range(n)]
        self.tasks.extend(getters)
        self.settle()

        def put_and_cancel() -> None:
            # In one loop step, so the woken getter cannot run in between.
            self._put_nowait()
            getters[0].cancel()

        self.in_loop(put_and_cancel)
        self.settle()

    @rule()
    def close(self) -> None:
        self.in_loop(self.q.close)
        self.closed = True
        self.settle()

    @invariant()
    def fifo_and_conservation(self) -> None:
        held = list(self.q._items)
        assert self.got + held == self.put_order

    @invariant()
    def nobody_blocked_where_they_should_not_be(self) -> None:
        waiting_get = self.q.statistics().tasks_waiting_get
        waiting_put = self.q.statistics().tasks_waiting_put
        if self.closed:
            assert all(t.done() for t in self.tasks)
        if waiting_get:
            assert self.q.empty()
        if waiting_put:
            assert self.q.full()

    def teardown(self) -> None:
        if not self.closed:
            self.in_loop(self.q.close)
            self.settle()
        assert not self.q.statistics().threaded
        assert all(t.done() for t in self.tasks)
        self.loop.close()


TestQueueMachine = QueueMachine.TestCase

if uvloop is not None:

    class UvloopQueueMachine(QueueMachine):
        loop_factory = staticmethod(uvloop.new_event_loop)

    TestUvloopQueueMachine = UvloopQueueMachine.TestCase


def test_queue_outlives_its_first_loop() -> None:
    async def first() -> Queue[int]:
        q: Queue[int] = Queue(2)
        await q.put(1)
        return q

    q = asyncio.run(first())

    async def second() -> list[int]:
        getter = asyncio.ensure_future(q.get())
        await settle()
        assert await getter == 1
        waiting = asyncio.ensure_future(q.get())  # waits on the new loop
        await settle()
        q.put_nowait(2)
        return [await waiting]

    assert asyncio.run(second()) == [2]


async def test_queue_of_another_live_loop_is_refused_for_waiting() -> None:
    q: Queue[int] = Queue(2)  # bound to this (running) loop

    def other_loop() -> None:
        async def wait_on_it() -> None:
            await q.get()

        with pytest.raises(RuntimeStateError):
            asyncio.run(wait_on_it())

    await anyio.to_thread.run_sync(other_loop)
