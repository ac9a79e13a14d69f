"""Records logged in child processes reach the parent's handlers.

Owns both ends.  The parent runs one listener per process: a daemon thread
with a private event loop serving a :class:`~._receiver.LogReceiver` on a
Unix socket in a private (0700) temporary directory; each received record is
handed to the parent's logger of the same name, so the parent's levels,
filters and handlers apply.  The child replaces its root handlers with a
:class:`ChildForwardingHandler` (a :class:`~._sink.ThreadedHandler` whose
writer thread sends the stdlib's length-prefixed pickles over that socket)
and is flushed before the child exits (atexit, multiprocessing's exit path,
and the exit-flush hooks of ``anycore._core._state`` via :mod:`._lifecycle`).

Contract for the pool / child machinery (see docs/logging.md):

* parent, before starting a child: ``cfg = child_logging_config()`` - a
  small picklable dict - passed to the child (or ``child_logging_env()`` for
  programs started with an environment);
* child, first thing: ``install_child_forwarding(cfg)`` (with no argument it
  reads ``ANYCORE_LOG_FORWARD``);
* child, right before ``os._exit``: ``anycore.logging.flush_all()``.

Rejected: a ``multiprocessing.Queue`` (a feeder thread per process that is
not flushed under ``os._exit``, and pickles by reference to the queue object,
which only works for children multiprocessing starts itself), and children
writing the parent's files (rotating files collide; PITFALLS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import Any

from .._core._backoff import Backoff
from . import _lifecycle
from ._context import current_context
from ._engine import ThreadedHandler
from ._receiver import LogReceiver, dispatch_locally
from ._records import _LENGTH, dumps_record

__all__ = [
    "ENV_ADDRESS",
    "ENV_LEVEL",
    "ChildForwardingHandler",
    "child_logging_config",
    "child_logging_env",
    "install_child_forwarding",
    "stop_child_listener",
]

ENV_ADDRESS = "ANYCORE_LOG_FORWARD"
ENV_LEVEL = "ANYCORE_LOG_LEVEL"


class _Listener:
    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="anycore-log-")
        os.chmod(self.directory, 0o700)
        self.path = os.path.join(self.directory, "records.sock")
        self.pid = os.getpid()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.receiver: LogReceiver | None = None
        self._thread = threading.Thread(target=self._run, name="anycore-log-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        _lifecycle.private_loops.add(loop)
        self._loop = loop
        self._stop = asyncio.Event()
        receiver = LogReceiver(dispatch_locally)
        await receiver.start_unix(self.path)
        self.receiver = receiver
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await receiver.aclose()

    def sync(self, timeout: float) -> None:
        """Let the listener read what children already wrote (a few loop turns)."""
        loop = self._loop
        if loop is None or not self._thread.is_alive():
            return

        async def turns() -> None:
            for _ in range(3):
                await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(turns(), loop).result(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            self.sync(timeout)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
            self._thread.join(timeout)
        shutil.rmtree(self.directory, ignore_errors=True)


_listener: _Listener | None = None
_listener_lock = threading.Lock()


def _ensure_listener() -> _Listener:
    global _listener
    with _listener_lock:
        if _listener is None or _listener.pid != os.getpid():
            listener = _Listener()
            listener.start()
            _listener = listener
            _lifecycle.pre_flush_hooks.append(listener.sync)
        return _listener


def stop_child_listener() -> None:
    """Stop the parent-side listener (read what is pending first).

    Called automatically at interpreter exit; call it earlier to release the
    socket once no child process will log any more.
    """
    global _listener
    with _listener_lock:
        listener, _listener = _listener, None
    if listener is not None and listener.pid == os.getpid():
        with contextlib.suppress(ValueError):
            _lifecycle.pre_flush_hooks.remove(listener.sync)
        listener.stop()


def child_logging_config(level: int | str | None = None) -> dict[str, Any]:
    """What a child process needs to send its records to this process.

    Starts the listener on first use.  Pass the returned (picklable) dict to
    the child, which calls :func:`install_child_forwarding` with it.

    Args:
        level: the child's root level (default: this process's root level).

    Returns:
        ``{"address": <unix socket path>, "level": <int>, "parent_pid": <int>}``.
    """
    listener = _ensure_listener()
    if level is None:
        level = logging.getLogger().getEffectiveLevel()
    elif isinstance(level, str):
        level = logging.getLevelName(level.upper())
    cfg: dict[str, Any] = {
        "address": listener.path,
        "level": int(level),
        "parent_pid": os.getpid(),
    }
    if _lifecycle.structlog_configured:
        cfg["structlog"] = True  # the parent renders; the child only routes
    return cfg


def child_logging_env(level: int | str | None = None) -> dict[str, str]:
    """The same as :func:`child_logging_config`, as environment variables.

    For programs started by a supervisor: merge into the child's environment;
    the child calls ``install_child_forwarding()`` without arguments.
    """
    cfg = child_logging_config(level)
    return {ENV_ADDRESS: cfg["address"], ENV_LEVEL: str(cfg["level"])}


def install_child_forwarding(
    config: Mapping[str, Any] | None = None, *, replace_handlers: bool = True
) -> ChildForwardingHandler | None:
    """In a child process: send every record to the parent's handlers.

    Replaces the root logger's handlers (inherited through fork, they would
    write the parent's files from a second process) with a
    :class:`ChildForwardingHandler` and sets the root level.

    Args:
        config: the dict from :func:`child_logging_config` in the parent;
            None reads ``ANYCORE_LOG_FORWARD`` / ``ANYCORE_LOG_LEVEL``.
        replace_handlers: remove (and close) the root's existing handlers.

    Returns:
        The installed handler, or None when there is nothing to forward to.
    """
    if config is None:
        address = os.environ.get(ENV_ADDRESS)
        if not address:
            return None
        config = {"address": address, "level": int(os.environ.get(ENV_LEVEL, logging.INFO))}
    root = logging.getLogger()
    if replace_handlers:
        for old in list(root.handlers):
            root.removeHandler(old)
            with contextlib.suppress(Exception):
                old.close()
    handler = ChildForwardingHandler(str(config["address"]))
    root.addHandler(handler)
    root.setLevel(int(config.get("level", logging.INFO)))
    if config.get("structlog"):
        from ._structured import structured_formatter

        # Same chain as the parent; every event takes the stdlib route to
        # the forwarding handler, the parent renders it.
        structured_formatter("json")
    return handler


class ChildForwardingHandler(ThreadedHandler):
    """Sends records to the parent's listener from a writer thread.

    The record is pickled on the caller's thread (with the bound logging
    context merged in as attributes); the writer connects to the Unix socket
    and sends batches.  A full buffer makes the caller send it itself
    (``overflow="block"``, the default): nothing is lost.

    Args:
        address: the parent's listener socket path.
        connect_timeout: seconds to keep retrying the connection per batch.
        **options: see :class:`~anycore.logging.ThreadedHandler`.
    """

    def __init__(self, address: str, *, connect_timeout: float = 5.0, **options: Any) -> None:
        super().__init__(**options)
        self.address = address
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None

    def _prepare(self, record: logging.LogRecord) -> bytes:
        if isinstance(record.msg, dict) and "_logger" in record.__dict__:
            record = _flatten_structlog(record)
        ctx = current_context()
        if ctx:
            attrs = record.__dict__
            for key, value in ctx.items():
                attrs.setdefault(key, value)
        data = dumps_record(record)
        return _LENGTH.pack(len(data)) + data

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + self.connect_timeout
        retry = Backoff(0.01, 0.5)  # jittered: many children may wait for one listener
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.address)
                return sock
            except OSError:
                sock.close()
                delay = retry.next()
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)

    def _write_batch(self, batch: list[Any]) -> None:
        data = b"".join(batch)
        if self._sock is None:
            self._sock = self._connect()
        try:
            self._sock.sendall(data)
        except OSError:
            # The listener restarted or the connection broke: one new attempt.
            self._close_sink()
            self._sock = self._connect()
            self._sock.sendall(data)

    def _close_sink(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _after_fork_child(self) -> None:
        super()._after_fork_child()
        # Closing our copy of the parent's socket does not shut it down.
        with contextlib.suppress(OSError):
            self._close_sink()


_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_DERIVED = frozenset({"level", "logger", "_record", "_from_structlog"})


def _flatten_structlog(record: logging.LogRecord) -> logging.LogRecord:
    # A structlog event on its way to a ProcessorFormatter carries its event
    # dict as ``msg`` and the (unpicklable) bound logger as ``_logger``.  Send
    # the event as the message and its keys as attributes; the parent's
    # formatter (ExtraAdder) puts them back into the event dict.
    event: dict[str, Any] = dict(record.msg)  # type: ignore[arg-type]
    attrs = {k: v for k, v in record.__dict__.items() if k not in ("_logger", "_name")}
    flat = logging.makeLogRecord(attrs)
    flat.msg = str(event.pop("event", ""))
    flat.args = None
    exc = event.pop("exc_info", None)
    if exc is True:
        exc = sys.exc_info()
    if isinstance(exc, BaseException):
        exc = (type(exc), exc, exc.__traceback__)
    if isinstance(exc, tuple) and exc[0] is not None:
        event["exception"] = logging.Formatter().formatException(exc)
    for key, value in event.items():
        if key not in _DERIVED and key not in _RESERVED:
            flat.__dict__[key] = value
    return flat


import atexit  # noqa: E402 - registered after close_all so it runs before it (LIFO)

atexit.register(stop_child_listener)
