"""Queues end to end: a thread producer, async consumers, priorities, a child process.

    python examples/queues_demo.py

1. A plain thread (think: a blocking reader) feeds a bounded ``anycore.Queue``
   with ``sync_put`` - it blocks when the consumers fall behind - and closes
   the queue when its input ends.  Three consumer tasks ``async for`` over
   the queue and stop by themselves once it is closed and drained: no
   sentinels.  A results queue is closed the same way after the consumers.
2. A ``PriorityQueue``: lowest priority first, ties in insertion order.
3. A ``JoinableProcessQueue`` carries jobs to a child process, which answers
   on a ``ProcessQueue``; the loop never blocks on either.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time

from anycore import (
    ChildQueue,
    JoinableProcessQueue,
    PriorityQueue,
    ProcessQueue,
    Queue,
    QueueClosed,
)


def blocking_reader(out: Queue[str], lines: list[str]) -> None:
    """Runs in a plain thread: blocking puts, then close."""
    for line in lines:
        out.sync_put(line)  # blocks while the queue is full
    out.close()  # the consumers finish what is queued, then stop


async def consumer(name: str, inbox: Queue[str], results: Queue[tuple[str, int]]) -> None:
    async for line in inbox:  # ends when inbox is closed and empty
        await results.put((name, len(line.split())))
        inbox.task_done()


async def thread_to_tasks() -> None:
    lines = [f"line {i} has some words in it" for i in range(200)]
    inbox: Queue[str] = Queue(maxsize=8)  # bounded: the thread feels backpressure
    results: Queue[tuple[str, int]] = Queue(maxsize=0)
    reader = threading.Thread(target=blocking_reader, args=(inbox, lines))
    reader.start()
    consumers = [asyncio.create_task(consumer(f"c{i}", inbox, results)) for i in range(3)]
    await asyncio.gather(*consumers)
    results.close()
    await asyncio.to_thread(reader.join)
    words = 0
    per_consumer: dict[str, int] = {}
    async for name, count in results:
        words += count
        per_consumer[name] = per_consumer.get(name, 0) + 1
    print(f"thread -> 3 tasks: {sum(per_consumer.values())} lines, {words} words")
    try:
        await inbox.put("late")
    except QueueClosed:
        print("put after close raises QueueClosed")


async def priorities() -> None:
    pq: PriorityQueue[tuple[int, str]] = PriorityQueue()
    for item in [(2, "write report"), (1, "fix outage"), (2, "answer mail"), (0, "coffee")]:
        await pq.put(item)
    pq.close()
    print("priority order:", ", ".join(task for _, task in [item async for item in pq]))


def square_worker(jobs: ChildQueue[int], answers: ChildQueue[int]) -> None:
    """Runs in a child process: plain blocking get/put, ends when jobs close.

    The parent passes its process queues; they arrive here as ChildQueues.
    """
    for n in jobs:
        answers.put(n * n)
        jobs.task_done()


async def to_a_child_process() -> None:
    ctx = multiprocessing.get_context("spawn")
    async with JoinableProcessQueue[int](maxsize=4) as jobs, ProcessQueue[int]() as answers:
        child = ctx.Process(target=square_worker, args=(jobs, answers))
        child.start()
        for n in range(10):
            await jobs.put(n)  # waits off the loop when the queue is full
        await jobs.join()  # every job marked done by the child
        jobs.close()  # the child's `for n in jobs` ends
        total = sum([await answers.get() for _ in range(10)])
        await asyncio.to_thread(child.join)
    print(f"child process squared 0..9: sum {total}, exit code {child.exitcode}")


async def main() -> None:
    started = time.perf_counter()
    await thread_to_tasks()
    await priorities()
    await to_a_child_process()
    print(f"done in {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    asyncio.run(main())
