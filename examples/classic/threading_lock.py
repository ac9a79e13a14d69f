"""threading: a lock around a critical section.

Classic: ``with lock: counter += 1`` in several threads, because ``+=`` on a
shared value is a read, an add and a write that another thread may
interleave.  Changed: tasks switch only at an ``await``, so a section
without one needs no lock at all; a section that awaits in the middle (here
a simulated I/O between the read and the write) does, and ``anycore.Lock``
is that lock (anyio's: fair, cancellation-safe).

    python examples/classic/threading_lock.py
"""

from __future__ import annotations

import asyncio

import anycore


class Account:
    def __init__(self) -> None:
        self.balance = 0

    async def deposit_unsafely(self, amount: int) -> None:
        current = self.balance
        await asyncio.sleep(0)  # another task runs here and reads the same balance
        self.balance = current + amount

    async def deposit(self, lock: anycore.Lock, amount: int) -> None:
        async with lock:  # the critical section
            current = self.balance
            await asyncio.sleep(0)
            self.balance = current + amount


async def main() -> None:
    unsafe = Account()
    async with asyncio.TaskGroup() as tg:
        for _ in range(100):
            tg.create_task(unsafe.deposit_unsafely(1))
    print("without the lock: balance", unsafe.balance, "(100 deposits of 1)")

    safe, lock = Account(), anycore.Lock()
    async with asyncio.TaskGroup() as tg:
        for _ in range(100):
            tg.create_task(safe.deposit(lock, 1))
    print("with the lock: balance", safe.balance)


if __name__ == "__main__":
    anycore.run(main)
