"""threading: a timer.

Classic: ``t = threading.Timer(0.5, hello); t.start()`` - a thread that
sleeps, then calls; ``t.cancel()`` before it fires.  Changed:
``anycore.Timer`` has the same start / cancel, runs on the loop (no thread),
takes coroutine functions too, and as an ``async with`` block is cancelled
when the block ends.

    python examples/classic/threading_timer.py
"""

from __future__ import annotations

import asyncio

import anycore


async def main() -> None:
    fired = asyncio.Event()

    def hello() -> None:
        print("hello, world (from the timer)")
        fired.set()

    t = anycore.Timer(0.05, hello)
    t.start()
    await fired.wait()

    never = anycore.Timer(10, print, "this never prints")
    never.start()
    never.cancel()
    print("second timer cancelled before it fired")

    async with anycore.Timer(10, print, "nor this"):
        pass  # leaving the block cancels it
    print("timers done")


if __name__ == "__main__":
    anycore.run(main)
