"""multiprocessing: a clock printing the time every N seconds in a child process.

Classic, function form: ``p = multiprocessing.Process(target=clock,
args=(interval,)); p.start()``, then ``p.terminate()`` (or ``daemon=True``
and let the program end).  Changed: ``anycore.ChildProcess``: the block
owns the child - a daemon child is stopped (SIGTERM, grace, SIGKILL) and
reaped when the block ends, and dies with the parent even if the parent is
SIGKILLed.

    python examples/classic/mp_clock_function.py [SECONDS]
"""

from __future__ import annotations

import sys
import time

import anyio

import anycore


def clock(interval: float) -> None:
    while True:
        print(f"The time is {time.strftime('%H:%M:%S')}", flush=True)
        time.sleep(interval)


async def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 0.35
    async with anycore.ChildProcess(clock, 0.1, daemon=True) as child:
        print(f"clock child {child.pid} started", flush=True)
        await anyio.sleep(seconds)  # the parent's own work would go here
    print(f"clock child stopped at the end of the block: exit code {child.exitcode}")


if __name__ == "__main__":
    anycore.run(main)
