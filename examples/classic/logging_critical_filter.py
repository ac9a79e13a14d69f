"""logging: a handler-level CRITICAL filter with its own formatter.

Classic: a second handler whose level is CRITICAL and whose formatter is
louder, beside an everyday handler; each handler decides for itself what it
shows.  Changed: anycore's StreamHandler; the alert handler also writes
never-blocking, and both share the logger.

    python examples/classic/logging_critical_filter.py
"""

from __future__ import annotations

import logging
import sys

import anycore
from anycore.logging import StreamHandler

log = logging.getLogger("service")


class OnlyCritical(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL


async def main() -> None:
    log.info("starting")
    log.error("a request failed")
    log.critical("the database is gone")
    log.info("retrying")


if __name__ == "__main__":
    everyday = StreamHandler(sys.stdout)
    everyday.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    alerts = StreamHandler(sys.stdout)
    alerts.addFilter(OnlyCritical())
    alerts.setFormatter(logging.Formatter("!!! ALERT !!! %(message)s (%(name)s)"))
    log.addHandler(everyday)
    log.addHandler(alerts)
    log.setLevel(logging.INFO)
    anycore.run(main)
