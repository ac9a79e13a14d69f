"""multiprocessing: a producer feeding a daemon consumer through a joinable queue.

Classic: ``q = multiprocessing.JoinableQueue()``, a daemon consumer process
doing ``item = q.get(); ...; q.task_done()`` forever, the producer
``q.put(...)`` then ``q.join()`` to wait until every item was processed.
Changed: ``anycore.JoinableProcessQueue`` - the loop side awaits ``put`` and
``join`` (no blocked loop); the child gets the blocking side as it is.

    python examples/classic/mp_joinable_queue.py
"""

from __future__ import annotations

import anycore


def consumer(queue: anycore.ChildQueue[int], results: anycore.ChildQueue[int]) -> None:
    while True:
        item = queue.get()
        results.put(item * item)
        queue.task_done()


async def main() -> None:
    async with (
        anycore.JoinableProcessQueue[int]() as queue,
        anycore.ProcessQueue[int]() as results,
        anycore.ChildProcess(consumer, queue, results, daemon=True),
    ):
        for item in range(10):
            await queue.put(item)
        await queue.join()  # every item was taken and marked done
        squares = sorted([await results.get() for _ in range(10)])
        print("all items processed:", squares)


if __name__ == "__main__":
    anycore.run(main)
