"""Timers: one-shot :class:`Timer`, drift-free periodic :func:`every`, deadlines.

What the classic modules offer, on the loop:

* ``threading.Timer(interval, fn)`` -> :class:`Timer` (``fn`` sync or async);
* ``signal.setitimer`` / periodic threads -> :func:`every`, whose ticks are
  scheduled at ``start + n * interval`` so that they never drift, however
  long each iteration takes, with an explicit policy for overruns;
* ``signal.alarm`` -> deadlines: :func:`fail_after` / :func:`move_on_after`
  are anyio's cancel scopes, re-exported (they raise :class:`TimeoutError`);
* ``signal.pause`` -> :func:`anycore.next_signal`.

Time is the loop's monotonic clock (``anyio.current_time()``: ``loop.time()``
on asyncio, so a fake clock drives it; trio's clock on trio).  Everything here
works on asyncio, uvloop and trio: a timer runs in a background job (an
asyncio task, or a trio system task) owned by the runtime when one is open.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.lowlevel
from anyio import fail_after as fail_after, move_on_after as move_on_after

from ..errors import RuntimeStateError
from ._backend import BackgroundJob

__all__ = ["Tick", "Timer", "every", "fail_after", "move_on_after"]

logger = logging.getLogger("anycore.timers")

Overrun = Literal["skip", "burst", "delay"]


class Timer:
    """Call ``func(*args, **kwargs)`` once, ``interval`` seconds after start().

    The ``threading.Timer`` semantics: :meth:`start` arms it, :meth:`cancel`
    disarms it if it has not fired yet.  ``func`` may be a plain function or a
    coroutine function; an exception it raises is logged and kept in
    :attr:`exception`.  As an async context manager the timer starts on entry
    and is cancelled on exit, so it never outlives its scope.
    """

    def __init__(self, interval: float, func: Callable[..., object], *args: Any, **kwargs: Any):
        if interval < 0 or math.isnan(interval):
            raise ValueError(f"interval must be >= 0, not {interval}")
        self.interval = interval
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.exception: BaseException | None = None
        self._job: BackgroundJob | None = None
        self._fired = False

    def start(self) -> None:
        """Arm the timer (on the running loop).

        Raises:
            RuntimeStateError: it was started already.
        """
        if self._job is not None:
            raise RuntimeStateError("a timer can be started only once")
        from ._tasks import start_job

        name = f"Timer({getattr(self.func, '__name__', 'func')})"
        self._job = start_job(self._run, name=name)

    async def _run(self) -> None:
        await anyio.sleep(self.interval)
        self._fired = True
        try:
            result = self.func(*self.args, **self.kwargs)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self.exception = exc
            logger.exception("timer function %r failed", self.func)

    def cancel(self) -> None:
        """Stop the timer if it has not fired yet; a running async func is cancelled."""
        if self._job is not None:
            self._job.cancel()

    @property
    def fired(self) -> bool:
        """Whether the interval elapsed and ``func`` was called."""
        return self._fired

    def is_alive(self) -> bool:
        """Whether the timer is armed or its function is still running."""
        return self._job is not None and not self._job.done()

    async def wait(self) -> None:
        """Wait until the timer has fired (and func finished) or was cancelled."""
        if self._job is None:
            raise RuntimeStateError("the timer was not started")
        await self._job.wait()

    async def __aenter__(self) -> Timer:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()
        if self._job is not None:
            await self._job.wait()


@dataclass(frozen=True)
class Tick:
    """One tick of :func:`every`.

    Attributes:
        index: the tick's number on the schedule (0, 1, 2, ...; skipped ticks
            keep their numbers, so ``index`` can jump).
        scheduled: when the tick was due, in loop time
            (``start + index * interval``).
        now: when it was delivered.
        missed: how many ticks were skipped just before this one.
    """

    index: int
    scheduled: float
    now: float
    missed: int = 0

    @property
    def lateness(self) -> float:
        """How late the tick was delivered, in seconds."""
        return self.now - self.scheduled


class every:
    """Periodic ticks without drift: ``async for tick in every(interval): ...``.

    Tick ``n`` is due at ``start + n * interval`` (``start`` is when iteration
    began, plus ``delay``), so lateness never accumulates.  When the body
    overruns -- the next tick is already due when it asks for it -- the policy
    decides:

    * ``"skip"`` (default): ticks whose time has passed are dropped and
      counted in :attr:`Tick.missed`; the next tick is the first one still in
      the future (or due right now).  The schedule stays aligned.
    * ``"burst"``: every missed tick is delivered at once, in order, to catch
      up (for counters that must see every period).
    * ``"delay"``: the schedule restarts from the late tick (like a sleep of
      ``interval`` after each body); alignment is given up.

    Args:
        interval: seconds between ticks (> 0).
        delay: seconds before the first tick (default: the first tick is
            immediate).
        overrun: the policy above.
        limit: stop after this many ticks delivered (``None``: never).
    """

    def __init__(
        self,
        interval: float,
        *,
        delay: float = 0.0,
        overrun: Overrun = "skip",
        limit: int | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0, not {interval}")
        if overrun not in ("skip", "burst", "delay"):
            raise ValueError(f"overrun must be 'skip', 'burst' or 'delay', not {overrun!r}")
        self.interval = interval
        self.delay = delay
        self.overrun = overrun
        self.limit = limit
        self._start: float | None = None
        self._next = 0
        self._delivered = 0

    def __aiter__(self) -> every:
        return self

    async def __anext__(self) -> Tick:
        if self.limit is not None and self._delivered >= self.limit:
            raise StopAsyncIteration
        if self._start is None:
            self._start = anyio.current_time() + self.delay
        index = self._next
        due = self._start + index * self.interval
        now = anyio.current_time()
        missed = 0
        if now > due + self.interval:  # at least one later tick is already due too
            behind = int((now - due) // self.interval)
            if self.overrun == "skip":
                missed = behind
                index += behind
                due = self._start + index * self.interval
            elif self.overrun == "delay":
                self._start = now - index * self.interval
                due = now
        if now >= due:
            await anyio.lowlevel.checkpoint()  # a checkpoint even when already due
        while now < due:
            await anyio.sleep(due - now)
            now = anyio.current_time()
        self._next = index + 1
        self._delivered += 1
        return Tick(index, due, now, missed)
