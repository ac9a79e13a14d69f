"""anycore.logging in one file: structured lines, context, a network sink, lag.

Self-demo (bounded; writes into a temporary directory and exits)::

    python examples/logging_demo.py

What it shows:

* ``configure()`` sends structlog and stdlib loggers through one pipeline
  into a non-blocking file handler (JSON lines; the loop never waits on the
  disk);
* ``bind_context()`` adds keys to every record logged inside the block;
* a :class:`~anycore.logging.SocketHandler` sends records, on the loop, to a
  log receiver running in the same process;
* ``monitor_loop_lag()`` reports a call that blocked the loop, with its stack.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

import anycore
from anycore.logging import (
    SocketHandler,
    aflush_all,
    bind_context,
    configure,
    get_logger,
    monitor_loop_lag,
    open_log_receiver,
)


def blocking_call() -> None:
    time.sleep(0.25)  # what a forgotten synchronous call does to a server


async def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="anycore-logging-demo-"))
    logfile = workdir / "app.log"
    configure("INFO", "json", file=logfile)

    log = get_logger("demo")
    db = logging.getLogger("demo.db")  # a plain stdlib logger: same pipeline

    with bind_context(conn_id=1, peer="127.0.0.1:50000"):
        log.info("connection opened")
        db.info("query %s took %d ms", "SELECT 1", 3)
    log.info("outside any connection", items=3)

    # Records to a network sink, sent by a loop task (never a blocking send).
    received: list[logging.LogRecord] = []
    got_three = asyncio.Event()

    def on_record(record: logging.LogRecord) -> None:
        received.append(record)
        if len(received) == 3:
            got_three.set()

    async with open_log_receiver(on_record=on_record) as receiver:
        host, port = receiver.addresses["tcp"]
        sender = SocketHandler(host, port)
        remote = logging.getLogger("demo.remote")
        remote.addHandler(sender)
        remote.propagate = False
        for i in range(3):
            remote.warning("remote record %d", i)
        await asyncio.wait_for(got_three.wait(), 10)
        await sender.aclose()
    print("receiver got:", [r.getMessage() for r in received])

    # The lag monitor logs (through the same pipeline) when the loop stalls.
    async with monitor_loop_lag(0.1, capture_stack=True) as monitor:
        await asyncio.sleep(0.05)
        blocking_call()
        await asyncio.sleep(0.1)
    print(f"loop lag seen: {monitor.statistics().max_lag:.2f} s")

    await aflush_all()  # everything written so far reaches the file
    lines = [json.loads(line) for line in logfile.read_text().splitlines()]
    for line in lines:
        keys = {k: v for k, v in line.items() if k in ("conn_id", "peer", "items")}
        print(f"{line['level']:7} {line['logger']:10} {line['event'][:60]!r} {keys}")
    lag_lines = [x for x in lines if x["event"].startswith("event loop blocked")]
    assert lag_lines
    assert "blocking_call" in lag_lines[0]["event"]
    print(f"{len(lines)} lines in {logfile}")
    print("done")


if __name__ == "__main__":
    anycore.run(main)
