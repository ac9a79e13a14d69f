"""Signals as scoped, fan-out subscriptions on the event loop.

The OS allows one handler per signal per process, and Python runs it in the
main thread only.  anycore therefore keeps a single process-wide registry (the
*hub*): the first subscription to a signal installs one loop handler, on the
loop of the main thread (the *owner* loop), and every delivery fans out to all
subscribers -- callbacks registered with :func:`on_signal` and receivers
opened with :func:`open_signals` -- on whichever loop each one lives, through
``call_soon_threadsafe`` for loops in other threads.  When the last subscriber
of a signal goes, the loop handler is removed and the Python-level handler that
was there before is put back (``loop.remove_signal_handler`` alone would reset
it to the default).

A loop in another thread can subscribe only while the main thread's loop is an
owner (it has subscriptions of its own, as every runtime does); otherwise there
is nobody to route through and :class:`~anycore.errors.SignalError` says so.

Rejected: one ``loop.add_signal_handler`` per subscriber (the second replaces
the first) and ``signal.signal`` handlers of our own (they run between
bytecodes, in the main thread only, and cannot touch the loop safely).

On trio (through anyio) there is no loop to install handlers on: a hub per
trio run keeps one ``anyio.open_signal_receiver`` per subscribed signal (in a
background job) and fans each signal out to every subscriber, receivers and
callbacks alike, so the semantics match.  Only the main thread can receive
signals there.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import math
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any

import anyio

from ..errors import ClosedError, RuntimeStateError, SignalError
from ._backend import BackgroundJob, current_backend, running_loop

__all__ = ["SignalHandle", "SignalReceiver", "next_signal", "on_signal", "open_signals"]

logger = logging.getLogger("anycore.signals")

SignalCallback = Callable[[int], object]


class _Subscription:
    __slots__ = ("callback", "loop", "signals")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, signals: frozenset[int], callback: SignalCallback
    ) -> None:
        self.loop = loop
        self.signals = signals
        self.callback = callback


class _Hub:
    """The process-wide registry of signal subscriptions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[int, list[_Subscription]] = collections.defaultdict(list)
        self._owner: asyncio.AbstractEventLoop | None = None
        self._installed: dict[int, Any] = {}  # signal -> previous Python handler
        self._background: set[asyncio.Task[Any]] = set()

    # Called on the subscriber's loop thread.  From another thread the loop
    # handlers are installed by the owner loop; the returned future tells when.
    def subscribe(self, sub: _Subscription) -> concurrent.futures.Future[None] | None:
        in_main = threading.current_thread() is threading.main_thread()
        with self._lock:
            owner = self._owner
            if in_main:
                if owner is not sub.loop:
                    self._adopt(sub.loop)
                    owner = sub.loop
            elif owner is None or owner.is_closed() or not owner.is_running():
                raise SignalError(
                    "signal handlers can only be installed from the main thread. "
                    "Run anycore in the main thread (anycore.run() or "
                    "open_runtime()) so it can route signals to loops in other "
                    "threads, or subscribe from the main thread's loop."
                )
            for sig in sub.signals:
                self._subs[sig].append(sub)
            missing = [sig for sig in sub.signals if sig not in self._installed]
        if not missing:
            return None
        if in_main:
            for sig in missing:
                self._install(sig)
            return None
        assert owner is not None
        installed: concurrent.futures.Future[None] = concurrent.futures.Future()

        def install() -> None:
            try:
                self._install_all(missing)
            except BaseException as exc:
                installed.set_exception(exc)
            else:
                installed.set_result(None)

        owner.call_soon_threadsafe(install)
        return installed

    def unsubscribe(self, sub: _Subscription) -> None:
        with self._lock:
            unused = []
            for sig in sub.signals:
                subs = self._subs.get(sig)
                if subs and sub in subs:
                    subs.remove(sub)
                if not self._subs.get(sig):
                    self._subs.pop(sig, None)
                    unused.append(sig)
            owner = self._owner
        if not unused or owner is None or owner.is_closed():
            return
        if threading.current_thread() is threading.main_thread():
            self._uninstall_all(unused)
        else:
            owner.call_soon_threadsafe(self._uninstall_all, unused)

    # Main thread only from here on.
    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make ``loop`` the owner (the previous owner loop is gone)."""
        old = self._owner
        if old is not None and not old.is_closed() and old.is_running():
            # Two loops in the main thread cannot both be running; the old
            # one is merely nested or stopped: move the handlers over.
            for sig in list(self._installed):
                try:
                    old.remove_signal_handler(sig)
                except Exception:  # pragma: no cover - defensive
                    pass
        # Subscriptions of loops that are closed can never be delivered again.
        for sig in list(self._subs):
            alive = [s for s in self._subs[sig] if not s.loop.is_closed()]
            if alive:
                self._subs[sig] = alive
            else:
                del self._subs[sig]
        previous = self._installed
        self._installed = {}
        self._owner = loop
        for sig, handler in previous.items():
            # Handlers from the old owner's time: restore, then reinstall below.
            try:
                signal.signal(sig, handler)
            except (OSError, ValueError, TypeError):  # pragma: no cover
                pass
        for sig in list(self._subs):
            self._install(sig)

    def _install_all(self, sigs: Iterable[int]) -> None:
        for sig in sigs:
            self._install(sig)

    def _install(self, sig: int) -> None:
        if sig in self._installed or self._owner is None:
            return
        previous = signal.getsignal(sig)
        try:
            self._owner.add_signal_handler(sig, self._dispatch, sig)
        except (RuntimeError, ValueError, OSError) as exc:
            raise SignalError(f"cannot handle {_name(sig)}: {exc}") from exc
        self._installed[sig] = previous

    def _uninstall_all(self, sigs: Iterable[int]) -> None:
        with self._lock:
            for sig in sigs:
                if sig in self._subs or sig not in self._installed:
                    continue
                previous = self._installed.pop(sig)
                owner = self._owner
                if owner is not None and not owner.is_closed():
                    owner.remove_signal_handler(sig)
                try:
                    signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
                except (OSError, ValueError, TypeError):  # pragma: no cover
                    pass

    def _dispatch(self, sig: int) -> None:
        with self._lock:
            subs = list(self._subs.get(sig, ()))
        owner = self._owner
        for sub in subs:
            if sub.loop is owner:
                self._deliver(sub, sig)
            elif not sub.loop.is_closed():
                try:
                    sub.loop.call_soon_threadsafe(self._deliver, sub, sig)
                except RuntimeError:  # the loop closed in between
                    pass

    def _deliver(self, sub: _Subscription, sig: int) -> None:
        try:
            result = sub.callback(sig)
        except Exception:
            logger.exception("signal callback %r failed", sub.callback)
            return
        if isinstance(result, Awaitable):
            task = asyncio.ensure_future(result)
            self._background.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("async signal callback failed", exc_info=task.exception())


_hub = _Hub()


def _name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _check(signals: Iterable[int]) -> frozenset[int]:
    result = frozenset(int(s) for s in signals)
    if not result:
        raise ValueError("give at least one signal")
    for sig in result:
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            raise SignalError(f"{_name(sig)} cannot be caught")
        if not 0 < sig < signal.NSIG:
            raise ValueError(f"not a signal number: {sig}")
    return result


def _on_trio() -> bool:
    try:
        return current_backend() == "trio"
    except RuntimeError:
        raise RuntimeStateError("signals need a running event loop") from None


def _require_main_thread() -> None:
    if threading.current_thread() is not threading.main_thread():
        raise SignalError(
            "on trio, signals can only be received in the main thread "
            "(run trio there, or route the signal through a main-thread task)"
        )


class SignalHandle:
    """A callback subscription made by :func:`on_signal`.

    ``remove()`` ends it (idempotent); the handle is also a context manager
    that removes it on exit.
    """

    __slots__ = ("_installed", "_removed", "_sub")

    def __init__(
        self, sub: _Subscription, installed: concurrent.futures.Future[None] | None
    ) -> None:
        self._sub = sub
        self._installed = installed
        self._removed = False

    async def wait_installed(self) -> None:
        """Wait until signals are really caught.

        Immediate in the main thread; from another thread the main thread's
        loop installs the handler, and this waits for it (or raises its error).
        """
        if self._installed is not None:
            await asyncio.wrap_future(self._installed)

    @property
    def signals(self) -> frozenset[int]:
        """The signals this subscription receives."""
        return self._sub.signals

    def remove(self) -> None:
        """Stop calling the callback; restore the previous handler when last."""
        if not self._removed:
            self._removed = True
            _hub.unsubscribe(self._sub)

    def __enter__(self) -> SignalHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def on_signal(sig: int, callback: SignalCallback, *more: int) -> SignalHandle:
    """Call ``callback(signum)`` on the running loop whenever ``sig`` arrives.

    Several callbacks for one signal all run (in subscription order); an async
    callback is scheduled as a task.  Must be called with a running loop.  From
    a thread other than the main one, the handler is installed by the main
    thread's loop: ``await handle.wait_installed()`` to know it is in place.

    Args:
        sig: the signal (``more`` adds further signals for the same callback).
        callback: called with the signal number; sync or async.

    Returns:
        A :class:`SignalHandle`; ``remove()`` it (or use it in ``with``) to stop.

    Raises:
        SignalError: the signal cannot be caught, or this is not the main
            thread and no main-thread loop routes signals.
    """
    signals = _check((sig, *more))
    if _on_trio():
        _require_main_thread()
        return _TrioSignalHandle(signals, callback)
    loop = asyncio.get_running_loop()
    sub = _Subscription(loop, signals, callback)
    return SignalHandle(sub, _hub.subscribe(sub))


class _TrioHub:
    """Fan-out on trio, for one trio run: one receiver job per signal.

    Each signal has its own ``anyio.open_signal_receiver`` (in a background
    job) while it has subscribers, and every signal it receives goes to all of
    them.  One receiver per signal, so opening and closing them never disturbs
    the handlers of other signals; a new receiver for a signal waits until the
    previous one has closed (and restored the handler from before it).
    """

    def __init__(self) -> None:
        self._subs: dict[int, list[_TrioSignalHandle]] = {}
        self._jobs: dict[int, BackgroundJob] = {}
        self._ready: dict[int, anyio.Event] = {}
        self._closing: dict[int, BackgroundJob] = {}  # receivers being closed

    def subscribe(self, handle: _TrioSignalHandle) -> list[anyio.Event]:
        for sig in handle.signals:
            self._subs.setdefault(sig, []).append(handle)
            if sig not in self._jobs:
                ready = anyio.Event()
                self._ready[sig] = ready
                previous = self._closing.pop(sig, None)
                self._jobs[sig] = BackgroundJob(
                    functools.partial(self._receive, sig, ready, previous),
                    name=f"anycore-signal-{_name(sig)}",
                )
        return [self._ready[sig] for sig in handle.signals]

    def unsubscribe(self, handle: _TrioSignalHandle) -> None:
        for sig in handle.signals:
            subs = self._subs.get(sig, [])
            if handle in subs:
                subs.remove(handle)
            if not subs:
                self._subs.pop(sig, None)
                job = self._jobs.pop(sig, None)
                self._ready.pop(sig, None)
                if job is not None:
                    job.cancel()
                    self._closing[sig] = job

    async def _receive(self, sig: int, ready: anyio.Event, previous: BackgroundJob | None) -> None:
        try:
            if previous is not None:
                await previous.wait()  # it restores the handler from before it
            with anyio.open_signal_receiver(signal.Signals(sig)) as receiver:
                ready.set()
                async for received in receiver:
                    for handle in list(self._subs.get(sig, ())):
                        handle.deliver(received)
        finally:
            ready.set()


_trio_hub_var: Any = None  # a trio RunVar holding the run's _TrioHub


def _trio_hub() -> _TrioHub:
    import trio

    global _trio_hub_var
    if _trio_hub_var is None:
        _trio_hub_var = trio.lowlevel.RunVar("anycore_signal_hub")
    hub: _TrioHub | None = _trio_hub_var.get(None)
    if hub is None:
        hub = _TrioHub()
        _trio_hub_var.set(hub)
    return hub


class _TrioSignalHandle(SignalHandle):
    """:func:`on_signal` on trio: a subscription to the run's :class:`_TrioHub`."""

    __slots__ = ("_callback", "_hub", "_ready", "_signals")

    def __init__(self, signals: frozenset[int], callback: SignalCallback) -> None:
        self._signals = signals
        self._callback = callback
        self._removed = False
        self._hub = _trio_hub()
        self._ready = self._hub.subscribe(self)

    def deliver(self, sig: int) -> None:
        try:
            result = self._callback(sig)
        except Exception:
            logger.exception("signal callback %r failed", self._callback)
            return
        if isinstance(result, Awaitable):
            awaitable = result

            async def run() -> None:
                await awaitable

            BackgroundJob(run, name=f"signal callback {self._callback!r}")

    async def wait_installed(self) -> None:
        for ready in self._ready:
            await ready.wait()

    @property
    def signals(self) -> frozenset[int]:
        return self._signals

    def remove(self) -> None:
        if not self._removed:
            self._removed = True
            self._hub.unsubscribe(self)


class SignalReceiver:
    """An async iterator over the signals received while it is open.

    Repeats of a signal that is already pending are coalesced (as trio does):
    the receiver tells *that* a signal came, not how often.
    """

    def __init__(self, signals: Iterable[int]) -> None:
        self._signals = _check(signals)
        self._pending: dict[int, None] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._handle: SignalHandle | None = None
        self._closed = False

    @property
    def signals(self) -> frozenset[int]:
        """The signals this receiver listens to."""
        return self._signals

    def _on_signal(self, sig: int) -> None:
        self._pending[sig] = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> int:
        """Wait for the next signal and return its number.

        Raises:
            ClosedError: the receiver is closed.
        """
        while not self._pending:
            if self._closed:
                raise ClosedError("signal receiver is closed")
            loop = running_loop()  # on trio, a stand-in whose futures trio awaits
            if loop is None:
                raise RuntimeStateError("SignalReceiver.receive() needs a running loop")
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        sig = next(iter(self._pending))
        del self._pending[sig]
        return sig

    def __aiter__(self) -> AsyncIterator[int]:
        return self

    async def __anext__(self) -> int:
        if self._closed and not self._pending:
            raise StopAsyncIteration
        try:
            return await self.receive()
        except ClosedError:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> SignalReceiver:
        self._handle = on_signal(next(iter(self._signals)), self._on_signal, *self._signals)
        try:
            await self._handle.wait_installed()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop receiving and restore the previous handlers (idempotent)."""
        self._closed = True
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def open_signals(*signals: int) -> SignalReceiver:
    """Receive ``signals`` for the body of an ``async with`` block.

    Example::

        async with open_signals(signal.SIGTERM, signal.SIGHUP) as sigs:
            async for sig in sigs:
                if sig == signal.SIGHUP:
                    reload_config()
                else:
                    break

    The runtime's own SIGINT/SIGTERM policy keeps working alongside; when the
    block ends the previous handlers are restored.
    """
    return SignalReceiver(signals)


async def next_signal(*signals: int, timeout: float | None = None) -> int | None:
    """Wait for one of ``signals`` (``signal.pause()`` on the loop).

    Returns:
        The signal number, or ``None`` when ``timeout`` seconds passed first.
    """
    async with open_signals(*signals) as receiver:
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            return await receiver.receive()
        return None
