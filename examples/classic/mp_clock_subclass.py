"""multiprocessing: the clock child process in subclass form.

Classic: ``class ClockProcess(multiprocessing.Process)`` whose ``__init__``
stores the interval and whose ``run()`` loops printing the time; ``p =
ClockProcess(1); p.start()``.  Changed: subclass ``anycore.ChildProcess`` and
override ``run()`` the same way; the ``async with`` block owns the child
(stopped and reaped at its end, and it dies with the parent).  The child gets
a copy of the subclass's own attributes, as multiprocessing's does.

    python examples/classic/mp_clock_subclass.py
"""

from __future__ import annotations

import time

import anycore


class ClockProcess(anycore.ChildProcess[int]):
    def __init__(self, interval: float, ticks: int) -> None:
        super().__init__(daemon=False)
        self.interval = interval
        self.ticks = ticks

    def run(self) -> int:
        for _ in range(self.ticks):
            print(f"The time is {time.strftime('%H:%M:%S')}", flush=True)
            time.sleep(self.interval)
        return self.ticks


async def main() -> None:
    async with ClockProcess(0.05, 3) as clock:
        print(f"clock child {clock.pid} started", flush=True)
        print("the clock ticked", await clock.result(timeout=30), "times")
    print("exit code", clock.exitcode)


if __name__ == "__main__":
    anycore.run(main)
