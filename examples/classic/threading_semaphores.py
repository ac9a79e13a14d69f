"""threading: a semaphore pair signalling between a producer and a consumer.

Classic: two semaphores around a one-slot buffer, ``empty`` starting at 1
and ``full`` at 0: the producer acquires ``empty``, fills the slot, releases
``full``; the consumer does the opposite.  Changed: ``anycore.Semaphore``
(async acquire); the same protocol, in tasks.

    python examples/classic/threading_semaphores.py
"""

from __future__ import annotations

import asyncio

import anycore


async def main() -> None:
    empty, full = anycore.Semaphore(1), anycore.Semaphore(0)
    slot: list[int] = []

    async def producer() -> None:
        for item in range(5):
            await empty.acquire()
            slot.append(item)
            print("produced", item)
            full.release()

    async def consumer() -> None:
        for _ in range(5):
            await full.acquire()
            print("consumed", slot.pop())
            empty.release()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(consumer())
        tg.create_task(producer())


if __name__ == "__main__":
    anycore.run(main)
