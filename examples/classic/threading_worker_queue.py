"""threading: a worker thread fed through a queue (send / close, task_done / join).

Classic: a ``WorkerThread`` with an input ``queue.Queue``: ``send(item)``
puts, ``close()`` puts a sentinel, the thread's loop calls ``task_done()``
after each item, and the producer waits with ``queue.join()``.  Changed: the
worker is a task, and ``anycore.Queue`` has ``close()``: no sentinel - the
worker's ``async for`` ends once the queue is closed and drained, and
``join()`` waits for every ``task_done()``.  (``anycore.Actor`` packages the
same pattern with replies.)

    python examples/classic/threading_worker_queue.py
"""

from __future__ import annotations

import asyncio

import anycore


class Worker:
    def __init__(self) -> None:
        self.queue: anycore.Queue[str] = anycore.Queue(maxsize=10)
        self.handled: list[str] = []

    def send(self, item: str) -> None:
        self.queue.put_nowait(item)

    def close(self) -> None:
        self.queue.close()

    async def run(self) -> None:
        async for item in self.queue:  # ends when closed and empty
            await asyncio.sleep(0)  # the work
            self.handled.append(item.upper())
            self.queue.task_done()
        print("worker: queue closed and drained")


async def main() -> None:
    worker = Worker()
    task = anycore.spawn(worker.run, name="worker")
    for word in ("alpha", "beta", "gamma"):
        worker.send(word)
    await worker.queue.join()  # every item handled
    print("joined:", worker.handled)
    worker.close()
    await task

    async with anycore.Actor(str.upper) as actor:  # the packaged form
        print("actor replied:", await actor.ask("delta"))


if __name__ == "__main__":
    anycore.run(main)
