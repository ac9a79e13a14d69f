"""A fake clock for asyncio: virtual time that tests advance or let jump.

asyncio has no mock clock (pytest-asyncio#83, anyio#260).  This one is an
asyncio ``SelectorEventLoop`` whose ``time()`` reads a :class:`FakeClock` and
whose selector, when the loop would sleep, *jumps* the clock to the next timer
instead (after ``autojump_threshold`` seconds of real time without I/O, like
trio's ``MockClock``).  Everything built on ``loop.time()`` and
``loop.call_at`` -- ``asyncio.sleep``, ``wait_for``, anyio's cancel scopes,
anycore's ``every`` and ``Timer`` -- then runs in virtual time: an hour of
timers takes milliseconds, and schedules can be asserted exactly.

uvloop keeps its clock inside libuv, so the fake clock drives the default
asyncio loop only.  Real I/O still works: the selector still polls sockets
and pipes, it only stops *waiting* for time to pass.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

__all__ = ["FakeClock"]

T = TypeVar("T")
FileObject = int | Any  # a descriptor or an object with fileno(), as selectors takes


class FakeClock:
    """Virtual monotonic time for an asyncio loop.

    Args:
        start: the initial reading of the clock.
        autojump_threshold: seconds of *real* time the loop may sit idle (no
            ready callbacks, no I/O) before the clock jumps to the next timer.
            ``0`` jumps at once (the usual choice); ``math.inf`` never jumps,
            so time moves only through :meth:`advance`.

    Example::

        clock = FakeClock(autojump_threshold=0)
        ticks = clock.run(collect_ticks)   # an hour of every(1.0) in ~ms
    """

    def __init__(self, start: float = 0.0, *, autojump_threshold: float = 0.0) -> None:
        if autojump_threshold < 0 or math.isnan(autojump_threshold):
            raise ValueError("autojump_threshold must be >= 0")
        self._now = float(start)
        self.autojump_threshold = autojump_threshold
        self.jumps = 0

    def time(self) -> float:
        """The current virtual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        self._now += seconds

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """A new asyncio loop driven by this clock (a loop factory)."""
        loop = asyncio.SelectorEventLoop(_JumpingSelector(self))
        loop.time = self.time  # type: ignore[method-assign]
        return loop

    def run(self, main: Callable[..., Awaitable[T]], *args: Any, debug: bool = False) -> T:
        """``asyncio.Runner`` on a loop driven by this clock; returns main's result."""

        async def wrapper() -> T:
            return await main(*args)

        with asyncio.Runner(loop_factory=self.new_event_loop, debug=debug) as runner:
            return runner.run(wrapper())


class _JumpingSelector(selectors.BaseSelector):
    """The platform selector, but waiting for a timer jumps the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._real = selectors.DefaultSelector()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            # No timer pending (None): only I/O can wake us, wait for it for real.
            return self._real.select(timeout)
        threshold = self._clock.autojump_threshold
        events = self._real.select(min(timeout, threshold))
        if not events and threshold <= timeout:
            self._clock.advance(timeout)
            self._clock.jumps += 1
        return events

    def register(self, fileobj: FileObject, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileObject) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: FileObject, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_key(self, fileobj: FileObject) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Mapping[FileObject, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()
