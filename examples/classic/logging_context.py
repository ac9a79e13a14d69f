"""logging: extra context (host name and IP) through ``extra=`` and an adapter.

Classic: ``log.info("...", extra={"clientip": ip, "user": name})`` with a
format naming ``%(clientip)s``, or a ``LoggerAdapter`` that adds the same
keys to every call.  Changed: both still work on anycore's handlers; and
anycore's ``bind_context`` binds the keys once for a block - and for every
task started in it - through contextvars, which the adapter cannot do.

    python examples/classic/logging_context.py
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import anycore
from anycore.logging import ContextFilter, StreamHandler, bind_context

FORMAT = "%(asctime)s %(clientip)-15s %(user)-8s %(message)s"
log = logging.getLogger("tcpserver")


class ConnectionAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


async def handle_request(n: int) -> None:
    await asyncio.sleep(0)
    log.warning("request %d handled", n)  # the context comes from bind_context


async def main() -> None:
    log.warning(
        "protocol problem: %s",
        "connection reset",
        extra={"clientip": "192.168.0.1", "user": "fbloggs"},
    )
    adapter = ConnectionAdapter(log, {"clientip": "10.0.0.7", "user": "ann"})
    adapter.warning("via the adapter")
    with bind_context(clientip="127.0.0.1", user="bob"):
        async with asyncio.TaskGroup() as tg:
            for n in range(2):
                tg.create_task(handle_request(n))


if __name__ == "__main__":
    handler = StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(ContextFilter())  # bound context -> record attributes
    log.addHandler(handler)
    log.propagate = False
    anycore.run(main)
