"""Targets of test_kill_under_load: a pool job, a supervised loop, a server.

Run as a script (``python _kill_targets.py asyncio|uvloop LOGFILE``) it is
the SIGTERM test's server: ``anycore.run`` with a 10 s drain bound, a line
handler that takes 0.5 s per request and logs one record per request to a
FileHandler, and an ``anycore.Queue`` of 10,000 items with a background
consumer that starts once 100 requests are in flight.  It prints
``PORT n``, then ``BUSY 100`` when 100 requests are being handled,
``QUEUED n`` (the queue's size) when the shutdown begins, ``DRAINING`` once
every listener is closed (the DRAIN phase has begun), and after the
shutdown ``CONSUMED n LEFT m`` (items taken by the consumer, items still
in the queue).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

ITEMS = 10_000
CLIENTS = 100

# A supervised program: a Python loop printing a line every 50 ms.
LOOP = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.05)\n"


def work(i: int) -> tuple[int, int, int]:
    """A ~10 ms job: its index, its square and the worker's pid."""
    time.sleep(0.01)
    return i, i * i, os.getpid()


def _serve(loop: str, logfile: str) -> int:
    import anycore
    from anycore.logging import FileHandler

    log = logging.getLogger("kill_targets.requests")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = FileHandler(logfile)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)

    consumed = 0
    queue: anycore.Queue[int] = anycore.Queue(maxsize=0)
    busy = 0
    all_busy = asyncio.Event()

    class Slow(anycore.LineHandler):
        delimiter = b"\n"

        async def line_received(self, line: bytes) -> None:
            nonlocal busy
            log.info("request %s", line.decode())
            busy += 1
            if busy == CLIENTS:
                print("BUSY", busy, flush=True)
                all_busy.set()
            await asyncio.sleep(0.5)
            self.send_line(b"ok " + line)

    async def consume() -> None:
        nonlocal consumed
        await all_busy.wait()
        async for _item in queue:
            consumed += 1
            await asyncio.sleep(0)  # slow enough that the queue is not empty at SIGTERM

    async def main() -> None:
        for i in range(ITEMS):
            queue.put_nowait(i)
        anycore.spawn(consume, name="consumer")
        runtime = anycore.current_runtime()
        assert runtime is not None

        async def report() -> None:
            print("QUEUED", queue.qsize(), flush=True)

        async def draining() -> None:
            print("DRAINING", flush=True)

        runtime.add_shutdown_step(anycore.Phase.STOP_ACCEPTING, "queue probe", report)
        runtime.add_shutdown_step(anycore.Phase.DRAIN, "drain probe", draining)
        async with anycore.serve(Slow, "tcp://127.0.0.1:0", backlog=512) as server:
            print("PORT", server.port, flush=True)
            await server.serve_forever()

    try:
        anycore.run(main, loop=loop, drain_timeout=10)  # type: ignore[arg-type]
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:
        code = 0
    finally:
        handler.close()
        log.removeHandler(handler)
    print("CONSUMED", consumed, "LEFT", queue.qsize(), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1], sys.argv[2]))
