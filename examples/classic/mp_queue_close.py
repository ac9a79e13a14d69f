"""multiprocessing: ending a queue with a sentinel, and with anycore's close.

Classic: the producer puts a sentinel (``None``) and the consumer stops when
it sees it - one per consumer, and a sentinel that is a valid item breaks
everything.  Changed: ``close()``: producers get an error after it, the
consumer drains what is left and its loop ends; nothing is lost, no value is
reserved.

    python examples/classic/mp_queue_close.py
"""

from __future__ import annotations

import anycore

SENTINEL = None


def consume_until_sentinel(queue: anycore.ChildQueue[int | None]) -> list[int]:
    got = []
    while (item := queue.get()) is not SENTINEL:
        got.append(item)
    return got


def consume_until_closed(queue: anycore.ChildQueue[int]) -> list[int]:
    return list(queue)


async def main() -> None:
    async with (
        anycore.ProcessQueue[int | None]() as queue,
        anycore.ChildProcess(consume_until_sentinel, queue) as child,
    ):
        for i in range(5):
            await queue.put(i)
        await queue.put(SENTINEL)
        print("with a sentinel:", await child.result(timeout=30))

    async with (
        anycore.ProcessQueue[int]() as queue2,
        anycore.ChildProcess(consume_until_closed, queue2) as child,
    ):
        for i in range(5):
            await queue2.put(i)
        queue2.close()
        print("with close():", await child.result(timeout=30))
        try:
            await queue2.put(99)
        except anycore.QueueClosed:
            print("a put after close raises QueueClosed")


if __name__ == "__main__":
    anycore.run(main)
