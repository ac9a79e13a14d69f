"""multiprocessing: several consumer processes sharing one task queue.

Classic: N ``Process(target=consumer, args=(tasks, results))`` reading a
``JoinableQueue``, one ``None`` sentinel per consumer at the end.  Changed:
the same shape on ``anycore.JoinableProcessQueue``; ``close()`` replaces the
sentinels - every consumer's ``for item in queue`` ends once the queue is
closed and empty.

    python examples/classic/mp_several_consumers.py
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack

import anycore


def consumer(tasks: anycore.ChildQueue[int], results: anycore.ChildQueue[tuple[int, int]]) -> int:
    handled = 0
    for n in tasks:  # ends when the queue is closed and drained
        results.put((n, os.getpid()))
        tasks.task_done()
        handled += 1
    return handled


async def main() -> None:
    async with AsyncExitStack() as stack:
        tasks = await stack.enter_async_context(anycore.JoinableProcessQueue[int]())
        results = await stack.enter_async_context(anycore.ProcessQueue[tuple[int, int]](0))
        children = [
            await stack.enter_async_context(anycore.ChildProcess(consumer, tasks, results))
            for _ in range(3)
        ]
        for n in range(30):
            await tasks.put(n)
        await tasks.join()
        tasks.close()  # no sentinels: each consumer's loop ends
        handled = [await child.result(timeout=30) for child in children]
        done = [(await results.get())[0] for _ in range(30)]
    print(
        f"{len(children)} consumers handled {sum(handled)} tasks: {sorted(done) == list(range(30))}"
    )


if __name__ == "__main__":
    anycore.run(main)
