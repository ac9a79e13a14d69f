"""Actors: a task that owns a mailbox and handles one message at a time.

What this module owns: :class:`Actor`, the classic ``WorkerThread`` pattern
(a worker with an input queue, ``send`` and ``close``) as a task on the loop::

    async with Actor(handler, mailbox_size=100) as actor:
        await actor.send(msg)            # fire and forget, with backpressure
        reply = await actor.ask(msg)     # request / reply
    # leaving the block closes the mailbox and waits until it is drained

Messages are handled strictly in order, one at a time, so the handler's
state needs no lock.  The mailbox is an anycore :class:`~anycore.Queue`
(bounded: a full mailbox makes ``send`` wait), so plain threads can post too
(:meth:`Actor.sync_send`).

Errors always reach somebody: a failing ``ask`` raises in the asker and the
actor carries on; a failing ``send`` (nobody is waiting for it) stops the
actor - later sends raise :class:`~anycore.errors.BrokenError`, asks still
queued fail the same way, and the exception is re-raised when the ``async
with`` block exits (as a task group would).  Leaving the block by an exception
or cancellation cancels the actor instead of draining it.

Rejected: logging and swallowing errors of fire-and-forget messages (a
silently dead or silently wrong actor), and one task per message (loses the
ordering that makes an actor useful).

The actor's task is a background job (an asyncio task, or a trio system task)
and its mailbox an anycore Queue, so actors work on asyncio, uvloop and trio.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from .._core._backend import BackgroundJob, running_loop
from .._core._queues import Queue
from ..errors import BrokenError, QueueClosed, QueueEmpty, RuntimeStateError

__all__ = ["Actor", "ActorStatistics"]

M = TypeVar("M")
R = TypeVar("R")

#: Default bound of an actor's mailbox.
DEFAULT_MAILBOX_SIZE = 256


@dataclass(frozen=True, slots=True)
class ActorStatistics:
    """A snapshot of an actor, from :meth:`Actor.statistics`.

    Attributes:
        queued: messages waiting in the mailbox.
        handled: messages handled successfully.
        failed: messages whose handler raised.
        running: whether the actor's task is alive.
        closed: whether the mailbox is closed.
    """

    queued: int
    handled: int
    failed: int
    running: bool
    closed: bool


class Actor(Generic[M, R]):
    """A task that handles the messages sent to it, one at a time, in order.

    Args:
        handler: called with each message; a plain function or a coroutine
            function.  Its return value is the reply to :meth:`ask`.
        mailbox_size: most messages waiting (``send`` waits beyond it);
            ``0`` means unbounded.
        name: the task's name (defaults to the handler's).
    """

    @overload
    def __init__(
        self: Actor[M, R],
        handler: Callable[[M], Awaitable[R]],
        *,
        mailbox_size: int = ...,
        name: str | None = ...,
    ) -> None: ...

    @overload
    def __init__(
        self: Actor[M, R],
        handler: Callable[[M], R],
        *,
        mailbox_size: int = ...,
        name: str | None = ...,
    ) -> None: ...

    def __init__(
        self,
        handler: Callable[[M], Awaitable[R]] | Callable[[M], R],
        *,
        mailbox_size: int = DEFAULT_MAILBOX_SIZE,
        name: str | None = None,
    ) -> None:
        self._handler = handler
        self._is_async = inspect.iscoroutinefunction(handler)
        self._mailbox: Queue[tuple[M, asyncio.Future[R] | None]] = Queue(mailbox_size)
        self._name = name or getattr(handler, "__qualname__", None) or repr(handler)
        self._job: BackgroundJob | None = None
        self._error: BaseException | None = None
        self._handled = 0
        self._failed = 0

    def __repr__(self) -> str:
        return f"<Actor {self._name!r} {self.statistics()}>"

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Actor[M, R]:
        """Start the actor's task (``async with`` does this for you).

        Raises:
            RuntimeStateError: already started.
        """
        if self._job is not None:
            raise RuntimeStateError("actor already started")
        self._job = BackgroundJob(self._run, name=f"actor:{self._name}")
        return self

    async def __aenter__(self) -> Actor[M, R]:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.aclose()
        else:
            await self.cancel()

    def close(self) -> None:
        """Stop accepting messages; the actor handles what is queued, then ends."""
        self._mailbox.close()

    async def aclose(self) -> None:
        """Close and wait until every queued message is handled.

        Raises:
            BaseException: what a failing fire-and-forget message raised.
        """
        self.close()
        await self.wait()

    async def wait(self) -> None:
        """Wait until the actor's task ends (after :meth:`close`).

        Raises:
            BaseException: what a failing fire-and-forget message raised.
        """
        job = self._job
        if job is not None:
            await job.wait()  # cancelling this wait leaves the actor running
            if job.exception is not None:
                raise job.exception
        if self._error is not None:
            raise self._error

    async def cancel(self) -> None:
        """Stop now: cancel the message being handled and drop the rest.

        Queued asks fail with :class:`~anycore.errors.BrokenError`.
        """
        self.close()
        job = self._job
        if job is not None and not job.done():
            job.cancel()
            await job.wait()  # raises only if *we* are cancelled
        self._fail_queued(BrokenError(f"actor {self._name!r} was cancelled"))

    # -- messages ----------------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            raise BrokenError(f"actor {self._name!r} stopped: {self._error!r}") from self._error

    def _closed(self, exc: QueueClosed) -> BaseException:
        # A send that found (or waited into) a closed mailbox: say why.
        if self._error is not None:
            broken = BrokenError(f"actor {self._name!r} stopped: {self._error!r}")
            broken.__cause__ = self._error
            return broken
        return exc

    async def send(self, message: M) -> None:
        """Queue ``message`` (fire and forget), waiting while the mailbox is full.

        Raises:
            QueueClosed: the actor was closed (a :class:`~anycore.ClosedError`).
            BrokenError: the actor stopped because a message failed.
        """
        self._check()
        try:
            await self._mailbox.put((message, None))
        except QueueClosed as exc:
            raise self._closed(exc) from None

    def send_nowait(self, message: M) -> None:
        """Queue ``message`` without waiting.

        Raises:
            QueueFull: the mailbox is full.
            QueueClosed: the actor was closed.
            BrokenError: the actor stopped because a message failed.
        """
        self._check()
        try:
            self._mailbox.put_nowait((message, None))
        except QueueClosed as exc:
            raise self._closed(exc) from None

    def sync_send(self, message: M, timeout: float | None = None) -> None:
        """Queue ``message`` from a plain thread, blocking while the mailbox is full.

        Raises:
            QueueFull: still full after ``timeout``.
            QueueClosed: the actor was closed.
            BrokenError: the actor stopped because a message failed.
        """
        self._check()
        try:
            self._mailbox.sync_put((message, None), timeout=timeout)
        except QueueClosed as exc:
            raise self._closed(exc) from None

    async def ask(self, message: M) -> R:
        """Send ``message`` and wait for the handler's return value.

        Cancelling the ask before the actor reaches the message skips it.

        Returns:
            What the handler returned.

        Raises:
            Exception: whatever the handler raised for this message.
            QueueClosed: the actor was closed.
            BrokenError: the actor stopped before handling it.
        """
        self._check()
        loop = running_loop()
        if loop is None:
            raise RuntimeStateError("Actor.ask() must be awaited in a running loop")
        fut: asyncio.Future[R] = loop.create_future()
        try:
            await self._mailbox.put((message, fut))
        except QueueClosed as exc:
            raise self._closed(exc) from None
        return await fut

    def statistics(self) -> ActorStatistics:
        """An :class:`ActorStatistics` snapshot."""
        job = self._job
        return ActorStatistics(
            queued=self._mailbox.qsize(),
            handled=self._handled,
            failed=self._failed,
            running=job is not None and not job.done(),
            closed=self._mailbox.closed,
        )

    # -- the actor's task -----------------------------------------------------------------

    async def _run(self) -> None:
        mailbox = self._mailbox
        handler: Any = self._handler
        is_async = self._is_async
        while True:
            try:
                message, reply = await mailbox.get()
            except QueueClosed:
                return
            if reply is not None and reply.done():
                continue  # the asker gave up before we got here
            try:
                result = handler(message)
                if is_async or inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                self._failed += 1
                if reply is None:
                    self._error = exc
                    self.close()
                    self._fail_queued(BrokenError(f"actor {self._name!r} stopped: {exc!r}"))
                    return
                if not reply.done():
                    reply.set_exception(exc)
                continue
            self._handled += 1
            if reply is not None and not reply.done():
                reply.set_result(result)

    def _fail_queued(self, error: BrokenError) -> None:
        while True:
            try:
                _, reply = self._mailbox.get_nowait()
            except (QueueClosed, QueueEmpty):
                return
            if reply is not None and not reply.done():
                reply.set_exception(error)
