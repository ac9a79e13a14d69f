"""coroutines: the round-robin scheduler over generator tasks, and the event loop.

Classic: generator functions that ``yield`` to give up the processor, and a
scheduler loop that keeps a deque of generators, calls ``next()`` on each in
turn and drops the ones that finished.  Changed: the same three tasks as
coroutines on the event loop, ``await asyncio.sleep(0)`` where they yielded;
the loop is the scheduler, and it can also wait for I/O, timers and signals.

    python examples/classic/coroutines_round_robin.py
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Generator

import anycore

# -- the classic: a scheduler of generators -------------------------------------


def countdown(n: int) -> Generator[None, None, None]:
    while n > 0:
        print("T-minus", n)
        yield
        n -= 1
    print("Blastoff!")


def countup(n: int) -> Generator[None, None, None]:
    x = 0
    while x < n:
        print("Counting up", x)
        yield
        x += 1


def round_robin(tasks: deque[Generator[None, None, None]]) -> None:
    while tasks:
        task = tasks.popleft()
        try:
            next(task)
            tasks.append(task)
        except StopIteration:
            pass


# -- the same on the event loop ---------------------------------------------------


async def countdown_async(n: int) -> None:
    while n > 0:
        print("T-minus", n)
        await asyncio.sleep(0)
        n -= 1
    print("Blastoff!")


async def countup_async(n: int) -> None:
    x = 0
    while x < n:
        print("Counting up", x)
        await asyncio.sleep(0)
        x += 1


async def main() -> None:
    print("-- generators, round robin:")
    round_robin(deque([countdown(3), countdown(2), countup(2)]))
    print("-- coroutines, the event loop:")
    async with asyncio.TaskGroup() as tg:
        tg.create_task(countdown_async(3))
        tg.create_task(countdown_async(2))
        tg.create_task(countup_async(2))


if __name__ == "__main__":
    anycore.run(main)
