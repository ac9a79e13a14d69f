"""threading: a reentrant lock.

Classic: ``threading.RLock`` lets the thread that holds it take it again (a
locked method calling another locked method); a plain Lock would deadlock.
Changed: ``anycore.RLock`` is reentrant per task - the owning task may take
it again, another task waits.

    python examples/classic/threading_rlock.py
"""

from __future__ import annotations

import asyncio

import anycore


class Inventory:
    def __init__(self) -> None:
        self.lock = anycore.RLock()
        self.items: dict[str, int] = {}

    async def add(self, name: str, n: int = 1) -> None:
        async with self.lock:
            self.items[name] = self.items.get(name, 0) + n

    async def add_many(self, names: list[str]) -> None:
        async with self.lock:  # held here...
            for name in names:
                await self.add(name)  # ...and taken again inside: fine
                await asyncio.sleep(0)


async def main() -> None:
    inv = Inventory()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(inv.add_many(["apple", "pear", "apple"]))
        tg.create_task(inv.add_many(["plum"]))
    print("inventory:", dict(sorted(inv.items.items())))


if __name__ == "__main__":
    anycore.run(main)
