"""threading: a clock thread printing the time every N seconds (daemonic).

Classic, function form: ``threading.Thread(target=clock, args=(interval,),
daemon=True).start()``; subclass form: a ``Thread`` subclass whose ``run()``
loops.  A daemon thread is killed abruptly when the program exits.
Changed: a background task (``anycore.spawn``) cancelled at shutdown - at a
clean point, its ``finally`` runs - and ``anycore.every`` for drift-free
ticks.  The subclass form becomes a class with an async ``run()``.

    python examples/classic/threading_clock.py [TICKS]
"""

from __future__ import annotations

import asyncio
import sys
import time

import anycore


async def clock(interval: float) -> None:
    """The function form: a loop of periodic ticks."""
    try:
        async for tick in anycore.every(interval):
            print(f"function clock tick {tick.index}: {time.strftime('%H:%M:%S')}")
    finally:
        print("function clock stopped cleanly")


class ClockTask:
    """The subclass form: ``run()`` is what the thread ran."""

    def __init__(self, interval: float, ticks: int) -> None:
        self.interval = interval
        self.ticks = ticks
        self.done = asyncio.Event()

    async def run(self) -> None:
        async for tick in anycore.every(self.interval, limit=self.ticks):
            print(f"class clock tick {tick.index}")
        self.done.set()


async def main() -> None:
    ticks = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    anycore.spawn(clock, 0.05, name="clock")  # daemonic: cancelled at shutdown
    obj = ClockTask(0.05, ticks)
    anycore.spawn(obj.run, name="class-clock")
    await obj.done.wait()
    print("main is done; the runtime cancels the daemonic clock")


if __name__ == "__main__":
    anycore.run(main)
