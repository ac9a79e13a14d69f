# Design: rate-limited per-connection log records.
#
# This module owns ``LogLimiter`` and the default one for connections outside
# a server.  A flood of bad connections (malformed input, handler errors,
# refusals at max_connections) must cost a bounded number of log lines, and
# nothing may be lost silently: per category, the first records of each
# interval are logged and the rest are summed up in one record when the
# interval ends.  Every layer of the stream stack logs through it (the
# Handler's default ``frame_too_large`` hook, both drivers, the accept loop),
# so it sits below all of them and imports nothing of theirs: a handler's
# limiter is found through its ``server`` attribute (``Server.log_limiter``).
#
# Rejected: a ``logging.Filter`` doing the counting (it would apply to every
# record of a logger, not per category, and could not schedule the summary).

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["LogLimiter", "limiter_of", "log_limiter"]


class LogLimiter:
    """Rate-limits repeated per-connection log records, by category.

    In each ``interval`` the first ``burst`` records of a category are logged;
    the rest are counted, and one record at the end of the interval says
    ``... and K more <category> in the last 10 s``.  A flood of bad connections
    then costs a bounded number of lines, and nothing is silently lost.  The
    categories are a fixed set (the drivers' and the server's own), so the
    bookkeeping is bounded too.

    Args:
        burst: records logged per category and interval.
        interval: seconds.
        clock: monotonic time.
    """

    def __init__(
        self, burst: int = 10, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.interval = interval
        self.clock = clock
        # category -> [window start, records in the window, level, logger]
        self._windows: dict[str, list[Any]] = {}

    def log(
        self,
        log: logging.Logger,
        level: int,
        category: str,
        msg: str,
        *args: object,
        **kwargs: Any,
    ) -> None:
        """Log ``msg % args`` unless ``category`` is over its burst this interval."""
        now = self.clock()
        window = self._windows.get(category)
        if window is not None and now - window[0] >= self.interval:
            self._summarise(category)
            window = None
        if window is None:
            window = self._windows[category] = [now, 0, level, log]
        window[1] += 1
        if window[1] <= self.burst:
            log.log(level, msg, *args, **kwargs)
        elif window[1] == self.burst + 1:
            self._schedule(category, window[0] + self.interval - now)

    def _schedule(self, category: str, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on asyncio: summarised by the next record of the category
        loop.call_later(max(0.0, delay), self._summarise, category)

    def _summarise(self, category: str) -> None:
        window = self._windows.pop(category, None)
        if window is None:
            return
        start, count, level, log = window
        extra = count - self.burst
        if extra > 0:
            log.log(
                level,
                "... and %d more %s in the last %.0f s",
                extra,
                category,
                max(self.clock() - start, 0.0),
            )


#: The limiter of per-connection warnings and errors outside a server (client
#: connections); each Server has its own (``Server.log_limiter``).
log_limiter = LogLimiter()


class _Served(Protocol):
    """A handler, as far as finding its limiter goes."""

    server: Any


def limiter_of(handler: _Served) -> LogLimiter:
    """The log limiter for ``handler``'s connection: its server's, else the default."""
    limiter = getattr(handler.server, "log_limiter", None)
    return limiter if isinstance(limiter, LogLimiter) else log_limiter
