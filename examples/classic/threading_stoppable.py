"""threading: a stoppable thread with terminate, suspend and resume.

Classic: a Thread subclass with ``_terminate`` and ``_suspend`` flags (and a
Condition to sleep on while suspended) that its ``run()`` loop checks between
two steps; ``terminate()``, ``suspend()`` and ``resume()`` set them.
Changed: terminate is cancellation; suspend and resume are an
``anycore.PauseSwitch`` whose ``checkpoint()`` the task awaits between two
steps - the task, not the caller, decides where it may stop.

    python examples/classic/threading_stoppable.py
"""

from __future__ import annotations

import asyncio

import anycore


class Worker:
    def __init__(self) -> None:
        self.switch = anycore.PauseSwitch()
        self.steps = 0
        self.task: asyncio.Task[None] | None = None
        self._watch: tuple[int, asyncio.Event] | None = None

    async def run(self) -> None:
        while True:
            await self.switch.checkpoint()  # suspend() stops us here
            self.steps += 1
            if self._watch is not None and self.steps >= self._watch[0]:
                self._watch[1].set()
            await asyncio.sleep(0.001)  # one step of work

    async def wait_for_steps(self, n: int) -> None:
        reached = asyncio.Event()
        self._watch = (n, reached)
        if self.steps < n:
            await reached.wait()

    def start(self) -> None:
        self.task = anycore.spawn(self.run, name="worker")

    def suspend(self) -> None:
        self.switch.pause()

    def resume(self) -> None:
        self.switch.resume()

    async def terminate(self) -> None:
        assert self.task is not None
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


async def main() -> None:
    worker = Worker()
    worker.start()
    await worker.wait_for_steps(10)
    worker.suspend()
    await asyncio.sleep(0.01)  # let it reach its checkpoint
    held = worker.steps
    await asyncio.sleep(0.05)
    print(f"suspended at step {held}; still {worker.steps} after 50 ms")
    worker.resume()
    await worker.wait_for_steps(held + 10)
    print(f"resumed: step {worker.steps}")
    await worker.terminate()
    print("terminated:", worker.task is not None and worker.task.cancelled())


if __name__ == "__main__":
    anycore.run(main)
