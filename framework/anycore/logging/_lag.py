"""Loop-lag monitor: log when the event loop was blocked too long.

Owns :class:`LoopLagMonitor` and :func:`monitor_loop_lag`.  A heartbeat
callback rescheduled with ``loop.call_later`` measures how late it runs (the
lag: time the loop could not run callbacks); a late heartbeat beyond the
threshold is logged once the loop runs again.  With ``capture_stack`` (on by
default in asyncio debug mode) a watchdog thread notices the missing
heartbeat *while* the loop is blocked and samples the loop thread's stack
with ``sys._current_frames()``, so the report names the blocking call.

Rejected: asyncio's ``slow_callback_duration`` (debug mode only, no stack,
asyncio's loop only) and a watchdog that logs from its thread (the report
would race with the blocked code's own output; the loop logs it in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

__all__ = ["LagStatistics", "LoopLagMonitor", "monitor_loop_lag"]


@dataclass(frozen=True)
class LagStatistics:
    """What a :class:`LoopLagMonitor` measured.

    Attributes:
        beats: heartbeats observed.
        max_lag: the longest lag seen, in seconds.
        over_threshold: how many heartbeats were later than the threshold.
        last_stack: the last blocking stack captured (or None).
    """

    beats: int
    max_lag: float
    over_threshold: int
    last_stack: str | None


class LoopLagMonitor:
    """Watches the running loop's responsiveness; see :func:`monitor_loop_lag`.

    Args:
        threshold: lag, in seconds, above which a warning is logged.
        interval: heartbeat period (default: a quarter of ``threshold``,
            at most 0.25 s).
        capture_stack: sample the blocked loop thread's stack (default: when
            the loop is in debug mode).
        logger: where reports go (default ``anycore.loop``).
        on_lag: also called as ``on_lag(lag_seconds, stack_or_None)``.
    """

    def __init__(
        self,
        threshold: float = 0.1,
        *,
        interval: float | None = None,
        capture_stack: bool | None = None,
        logger: logging.Logger | None = None,
        on_lag: Callable[[float, str | None], object] | None = None,
    ) -> None:
        if threshold <= 0:
            raise ValueError("threshold must be positive")
        self.threshold = threshold
        self.interval = interval if interval is not None else min(threshold / 4, 0.25)
        self.capture_stack = capture_stack
        self.logger = logger or logging.getLogger("anycore.loop")
        self.on_lag = on_lag
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._expected = 0.0
        self._last_beat = 0.0
        self._beats = 0
        self._max_lag = 0.0
        self._over = 0
        self._stack: str | None = None
        self._last_stack: str | None = None
        self._watchdog: threading.Thread | None = None
        self._stop = threading.Event()

    def statistics(self) -> LagStatistics:
        """A snapshot of what was measured so far."""
        return LagStatistics(self._beats, self._max_lag, self._over, self._last_stack)

    def start(self) -> None:
        """Start watching the running loop (call on the loop's thread)."""
        if self._loop is not None:
            raise RuntimeError("the monitor is already running")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        capture = self.capture_stack
        if capture is None:
            capture = loop.get_debug()
        self._stop.clear()
        self._schedule()
        if capture:
            self._watchdog = threading.Thread(
                target=self._watch, name="anycore-loop-lag-watchdog", daemon=True
            )
            self._watchdog.start()

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(max(1.0, self.interval * 4))
            self._watchdog = None
        self._loop = None

    def _schedule(self) -> None:
        # Lag is measured on the loop's own clock, the one call_later keeps
        # (so a virtual clock, anycore.testing.FakeClock, drives it too); the
        # watchdog thread reads real time.
        loop = self._loop
        assert loop is not None
        self._last_beat = time.monotonic()
        self._expected = loop.time() + self.interval
        self._handle = loop.call_later(self.interval, self._beat)

    def _beat(self) -> None:
        assert self._loop is not None
        lag = self._loop.time() - self._expected
        self._beats += 1
        if lag > self._max_lag:
            self._max_lag = lag
        if lag > self.threshold:
            self._over += 1
            stack, self._stack = self._stack, None
            self._report(lag, stack)
        else:
            self._stack = None
        self._schedule()

    def _report(self, lag: float, stack: str | None) -> None:
        if stack is not None:
            self._last_stack = stack
            self.logger.warning(
                "event loop blocked for %.3f s (threshold %.3f s); blocking stack:\n%s",
                lag,
                self.threshold,
                stack,
                extra={"loop_lag": lag, "blocking_stack": stack},
            )
        else:
            self.logger.warning(
                "event loop blocked for %.3f s (threshold %.3f s)",
                lag,
                self.threshold,
                extra={"loop_lag": lag},
            )
        if self.on_lag is not None:
            try:
                self.on_lag(lag, stack)
            except Exception:
                self.logger.exception("on_lag callback failed")

    def _watch(self) -> None:
        sampled_for = -1.0
        while not self._stop.wait(self.interval):
            last = self._last_beat
            late = time.monotonic() - last - self.interval
            if late > self.threshold and sampled_for != last:
                frame = sys._current_frames().get(self._loop_thread)
                if frame is not None:
                    self._stack = "".join(traceback.format_stack(frame))
                    sampled_for = last

    async def __aenter__(self) -> LoopLagMonitor:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.asynccontextmanager
async def monitor_loop_lag(
    threshold: float = 0.1,
    *,
    interval: float | None = None,
    capture_stack: bool | None = None,
    logger: logging.Logger | None = None,
    on_lag: Callable[[float, str | None], object] | None = None,
) -> AsyncIterator[LoopLagMonitor]:
    """Log a warning whenever the running loop is blocked longer than ``threshold``.

    Usage::

        async with monitor_loop_lag(0.1) as monitor:
            ...
        print(monitor.statistics().max_lag)

    Args:
        threshold: seconds of lag that count as "blocked".
        interval: heartbeat period (default ``min(threshold / 4, 0.25)``).
        capture_stack: include the blocking stack (sampled by a watchdog
            thread while the loop is blocked); default: in loop debug mode.
        logger: where reports go (default ``anycore.loop``).
        on_lag: optional callback ``on_lag(lag, stack)``.

    Returns:
        An async context manager yielding the :class:`LoopLagMonitor`.
    """
    monitor = LoopLagMonitor(
        threshold, interval=interval, capture_stack=capture_stack, logger=logger, on_lag=on_lag
    )
    monitor.start()
    try:
        yield monitor
    finally:
        monitor.stop()
