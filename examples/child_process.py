"""Python callables in child processes: results, errors, stopping, flushing.

    python examples/child_process.py

A bounded demo: runs a function and a coroutine in children, shows an
exception coming back with the child's traceback, and stops a daemon child
when its scope ends (its exit-flush hook still runs).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from anycore import ChildProcess, RemoteError, register_exit_flush


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


async def fetch_pid() -> int:
    await asyncio.sleep(0)
    return os.getpid()


def parse(text: str) -> int:
    return int(text)


def serve_forever(log_path: str, ready_path: str) -> None:
    # Runs in the child: a hook to flush "logs" before the child exits.
    register_exit_flush(lambda: Path(log_path).write_text("flushed on exit\n"))
    Path(ready_path).touch()
    while True:
        time.sleep(1)


async def main() -> None:
    async with ChildProcess(fib, 90, name="fib") as child:
        print(f"fib(90) = {await child.result()} from pid {child.pid}")
    print(f"exit code {child.exitcode}")

    async with ChildProcess(fetch_pid) as child:
        assert await child.result() == child.pid
        print("a coroutine ran under asyncio.run in the child")

    async with ChildProcess(parse, "not a number") as child:
        try:
            await child.result()
        except RemoteError as exc:
            last = exc.remote_traceback.strip().splitlines()[-1]
            print(f"child raised {type(exc.__cause__).__name__}: {last}")

    with tempfile.TemporaryDirectory() as tmp:
        log, ready = Path(tmp) / "log", Path(tmp) / "ready"
        async with ChildProcess(serve_forever, str(log), str(ready), daemon=True) as daemon:
            for _ in range(2000):  # bounded wait for the child to come up
                if ready.exists():
                    break
                await asyncio.sleep(0.005)
            print(f"daemon child {daemon.pid} running: {daemon.is_alive()}")
        print(f"daemon child stopped at scope end: exit code {daemon.exitcode}")
        print(f"its exit-flush hook wrote: {log.read_text().strip()}")
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
