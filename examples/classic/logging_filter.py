"""logging: a custom filter that drops the records of one function.

Classic: a ``logging.Filter`` subclass whose ``filter(record)`` returns False
for ``record.funcName == "noisy"``, added to a handler.  Changed: nothing in
the filter (anycore handlers honour stdlib filters); the records come from
coroutines and the handler never blocks the loop.

    python examples/classic/logging_filter.py
"""

from __future__ import annotations

import logging
import sys

import anycore
from anycore.logging import StreamHandler


class DropFunction(logging.Filter):
    """Drop every record logged from the function named ``name``."""

    def __init__(self, function: str) -> None:
        super().__init__()
        self.function = function

    def filter(self, record: logging.LogRecord) -> bool:
        return record.funcName != self.function


log = logging.getLogger("app")


async def noisy() -> None:
    for i in range(3):
        log.info("noisy chatter %d", i)


async def useful() -> None:
    log.info("useful work done")


async def main() -> None:
    await noisy()
    await useful()


if __name__ == "__main__":
    handler = StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(funcName)s: %(message)s"))
    handler.addFilter(DropFunction("noisy"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    anycore.run(main)
