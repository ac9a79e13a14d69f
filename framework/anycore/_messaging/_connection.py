"""Message passing: Pipe, Connection, Listener, Client, wait, codecs, authentication.

This module owns multiprocessing.connection re-expressed for an event loop:

* :class:`Connection` frames messages on a file descriptor (a socket or an OS
  pipe) exactly as :mod:`multiprocessing.connection` does - a 4-byte
  big-endian signed length, or ``-1`` and an 8-byte length for messages past
  2 GiB - so either end can be the standard library's.  The fd is
  non-blocking; reads and writes are tried first and, only when the kernel
  says "would block", the task waits on a loop reader / writer.  Nothing
  blocks the loop, on asyncio and on uvloop alike.
* the size check comes before the allocation: the announced length is
  compared with ``maxlength`` / ``max_message_size`` before a byte of the body
  is read, and a refused message closes the connection (its stream can no
  longer be trusted).  A large body is read by the kernel straight into
  the buffer of a BytesIO sized to it, whose ``getvalue()`` then hands that
  buffer over as the ``bytes`` result: one copy.  A bytearray copied to
  ``bytes`` measured five times the CPU per 1 MB message (two fresh buffers
  alive at once fault in every page), chunks joined at the end about 1.3x.
* receiving is cancellation-safe: a message half read when its task is
  cancelled is kept and the next receive finishes it.  A send cancelled
  half-way through a message breaks the connection (the peer would read a
  torn frame), and later sends say so.
* authentication is multiprocessing's HMAC challenge-response, in its modern
  form (a ``{sha256}`` digest prefix, Python >= 3.12) with the legacy HMAC-MD5
  answers of older peers accepted.  It runs on raw bytes before any object is
  decoded, with every handshake message capped at 256 bytes and digests
  compared with :func:`hmac.compare_digest`.
* codecs turn objects into message bodies: pickle (the default, as in
  multiprocessing: for trusted, authenticated peers), JSON and msgpack.

Rejected: the standard library's Connection on the loop side (its reads block);
asyncio streams or transports (a protocol object and a copy per message, and
no ``recv_bytes_into``); anyio's socket streams (they cannot carry an OS pipe,
which ``Pipe(duplex=False)`` and child processes use).
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import io
import ipaddress
import json
import logging
import os
import pickle
import select
import socket
import struct
import tempfile
import warnings
from collections.abc import Awaitable, Callable, Generator, Iterable
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeVar, runtime_checkable

import anyio

from ..errors import (
    AuthenticationError,
    BrokenError,
    BufferTooShort,
    ClosedError,
    FrameTooLarge,
    IncompleteFrame,
    InsecureListener,
    PeerClosed,
    RemoteProtocolError,
    UndecodableMessage,
)

__all__ = [
    "Codec",
    "PickleCodec",
    "JsonCodec",
    "MsgpackCodec",
    "Connection",
    "Pipe",
    "Listener",
    "Client",
    "wait_connections",
    "deliver_challenge",
    "answer_challenge",
    "DEFAULT_MAX_MESSAGE_SIZE",
]

T = TypeVar("T")

log = logging.getLogger("anycore.connection")

#: The largest message a Connection accepts unless told otherwise (64 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
_CHUNK = 64 * 1024
_CONCAT_LIMIT = 16 * 1024  # below this, header and body go out as one write

# -- codecs -----------------------------------------------------------------------


@runtime_checkable
class Codec(Protocol):
    """Turns objects into message bodies and back.

    ``loads`` must raise (any ``Exception``) on bytes it cannot decode; the
    Connection reports that as :class:`~anycore.UndecodableMessage`.
    """

    name: str

    def dumps(self, obj: Any) -> bytes | bytearray | memoryview:
        """Encode *obj*."""
        ...

    def loads(self, data: bytes | bytearray | memoryview) -> Any:
        """Decode one message body."""
        ...


class PickleCodec:
    """pickle: any picklable object.  Decoding runs code: trusted peers only.

    The default, as in multiprocessing.  Over a :class:`Listener` with an
    authkey nothing is unpickled before the handshake has passed.
    """

    name = "pickle"

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def dumps(self, obj: Any) -> bytes:
        """Pickle *obj*."""
        return pickle.dumps(obj, self.protocol)

    def loads(self, data: bytes | bytearray | memoryview) -> Any:
        """Unpickle one message."""
        return pickle.loads(data)


class JsonCodec:
    """JSON (UTF-8): safe with untrusted peers; dicts, lists, str, numbers, None."""

    name = "json"

    def dumps(self, obj: Any) -> bytes:
        """Encode *obj* as compact JSON."""
        return json.dumps(obj, separators=(",", ":")).encode()

    def loads(self, data: bytes | bytearray | memoryview) -> Any:
        """Decode one JSON message."""
        return json.loads(bytes(data))


class MsgpackCodec:
    """msgpack (the ``anycore[msgpack]`` extra): safe with untrusted peers, compact."""

    name = "msgpack"

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError as exc:  # pragma: no cover - the extra is installed in dev
            raise ImportError("the msgpack codec needs `pip install anycore[msgpack]`") from exc
        self._msgpack = msgpack

    def dumps(self, obj: Any) -> bytes:
        """Pack *obj*."""
        return self._msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]

    def loads(self, data: bytes | bytearray | memoryview) -> Any:
        """Unpack one message (strict: trailing bytes are an error)."""
        return self._msgpack.unpackb(data, raw=False)


CodecSpec = Codec | Literal["pickle", "json", "msgpack"]


def _codec(spec: CodecSpec) -> Codec:
    if isinstance(spec, str):
        if spec == "pickle":
            return PickleCodec()
        if spec == "json":
            return JsonCodec()
        if spec == "msgpack":
            return MsgpackCodec()
        raise ValueError(f"unknown codec {spec!r} (use 'pickle', 'json', 'msgpack' or a Codec)")
    if not isinstance(spec, Codec):
        raise TypeError(f"codec must be a name or have dumps/loads, not {spec!r}")
    return spec


# -- waiting for a file descriptor -------------------------------------------------


class _FdReady:
    """Futures woken when one fd becomes readable (or writable).

    One loop registration serves every waiter, so ``recv`` in one task and
    :func:`wait_connections` in another do not replace each other's reader.
    """

    __slots__ = ("_fd", "_futures", "_loop", "_write")

    def __init__(self, fd: int, write: bool) -> None:
        self._fd = fd
        self._write = write
        self._loop: asyncio.AbstractEventLoop | None = None
        self._futures: list[asyncio.Future[None]] = []

    def future(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if not self._futures:
            self._loop = loop
            if self._write:
                loop.add_writer(self._fd, self._wake)
            else:
                loop.add_reader(self._fd, self._wake)
        elif loop is not self._loop:
            raise RuntimeError("a Connection is used from two event loops at once")
        fut = loop.create_future()
        self._futures.append(fut)
        return fut

    def _unregister(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            if self._write:
                loop.remove_writer(self._fd)
            else:
                loop.remove_reader(self._fd)

    def _wake(self) -> None:
        futures, self._futures = self._futures, []
        self._unregister()
        for fut in futures:
            if not fut.done():
                fut.set_result(None)

    def discard(self, fut: asyncio.Future[None]) -> None:
        try:
            self._futures.remove(fut)
        except ValueError:
            return
        if not self._futures:
            self._unregister()

    async def wait(self) -> None:
        fut = self.future()
        try:
            await fut
        finally:
            self.discard(fut)

    def close(self) -> None:
        """Drop the registration; waiters get ClosedError."""
        futures, self._futures = self._futures, []
        self._unregister()
        for fut in futures:
            if not fut.done():
                fut.set_exception(ClosedError("the connection was closed"))


# -- Connection --------------------------------------------------------------------


def _as_bytes_view(buf: Any) -> memoryview:
    view = memoryview(buf)
    if view.itemsize != 1 or view.ndim != 1 or view.format not in ("B", "b", "c"):
        view = view.cast("B")
    return view


class Connection:
    """One end of a message channel: multiprocessing's Connection, async.

    Made by :func:`Pipe`, :meth:`Listener.accept` and :func:`Client`, or from
    any connected stream socket / pipe fd (``Connection(fd)`` takes ownership
    of the fd and makes it non-blocking).  Messages are framed like
    :mod:`multiprocessing.connection`'s, so the other end may be the standard
    library's Connection.

    A Connection pickles (it can be passed to a child process, as
    multiprocessing's can): the receiving process gets a duplicate of the fd.
    The sending process should close its copy once the child has it.

    Args:
        fd: a connected socket or pipe descriptor (owned from now on).
        readable: this end receives.
        writable: this end sends.
        codec: ``"pickle"`` (default), ``"json"``, ``"msgpack"`` or a
            :class:`Codec`, used by :meth:`send` / :meth:`recv`.
        max_message_size: the largest message :meth:`recv_bytes` accepts,
            checked against the announced length before anything is
            allocated.

    Raises:
        ValueError: neither readable nor writable, or a negative size.
    """

    def __init__(
        self,
        fd: int,
        readable: bool = True,
        writable: bool = True,
        *,
        codec: CodecSpec = "pickle",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if not readable and not writable:
            raise ValueError("at least one of readable and writable must be true")
        if max_message_size < 0:
            raise ValueError("max_message_size must be >= 0")
        self.codec: Codec = _codec(codec)  # before the fd is ours: a bad codec leaks nothing
        fd = fd.__index__()
        if fd < 0:
            raise ValueError(f"invalid file descriptor {fd}")
        os.set_blocking(fd, False)
        self._fd = fd
        self._readable = readable
        self._writable = writable
        self.max_message_size = max_message_size
        self._rbuf = bytearray()
        self._rpos = 0
        self._body: io.BytesIO | None = None  # a large message being read
        self._body_filled = 0
        self._eof = False
        self._broken: str | None = None
        self._read_ready = _FdReady(fd, write=False)
        self._write_ready = _FdReady(fd, write=True)
        self._recv_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()

    # -- introspection --
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._fd < 0

    @property
    def readable(self) -> bool:
        """Whether this end receives."""
        return self._readable

    @property
    def writable(self) -> bool:
        """Whether this end sends."""
        return self._writable

    def fileno(self) -> int:
        """The file descriptor.

        Raises:
            ClosedError: the connection is closed.
        """
        self._check_open()
        return self._fd

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ClosedError("the connection is closed")

    # -- closing --
    def close(self) -> None:
        """Close the fd now (idempotent); tasks waiting on it get ClosedError."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            self._read_ready.close()
            self._write_ready.close()
            os.close(fd)

    async def aclose(self) -> None:
        """Close the connection (the async-resource spelling of :meth:`close`)."""
        self.close()

    def detach(self) -> int:
        """Give up the fd without closing it and return it (the Connection is closed).

        Useful to wrap the fd as ``multiprocessing.connection.Connection(fd)``
        in code that wants blocking calls (call ``os.set_blocking(fd, True)``).
        """
        self._check_open()
        fd, self._fd = self._fd, -1
        self._read_ready.close()
        self._write_ready.close()
        return fd

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            # Like an unclosed socket: close it, and say so (a leak in the caller).
            self._fd = -1
            warnings.warn(f"unclosed Connection fd={fd}", ResourceWarning, stacklevel=2)
            try:
                os.close(fd)
            except OSError:  # pragma: no cover
                pass

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<anycore.Connection {state} codec={self.codec.name}>"

    # -- pickling: hand the fd to another process --
    def __reduce__(self) -> tuple[Callable[..., Connection], tuple[Any, ...]]:
        from multiprocessing import reduction

        self._check_open()
        if self._rpos < len(self._rbuf) or self._body is not None:
            raise ValueError("a Connection with unread buffered bytes cannot be sent")
        return _rebuild_connection, (
            reduction.DupFd(self._fd),
            self._readable,
            self._writable,
            self.codec,
            self.max_message_size,
        )

    # -- sending --
    async def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Send the bytes of *buf* (any buffer) as one message.

        Args:
            buf: a bytes-like object.
            offset: where in *buf* (in bytes) the message starts.
            size: how many bytes to send (default: to the end).

        Raises:
            ValueError: *offset* / *size* lie outside *buf*.
            ClosedError: this end is closed.
            BrokenError: the peer has gone (EPIPE / reset) or an earlier send
                was cancelled half-way through a message.
        """
        view = _as_bytes_view(buf)
        n = view.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        await self._send_frame(view[offset : offset + size])

    async def send(self, obj: Any) -> None:
        """Encode *obj* with the codec and send it (see :meth:`send_bytes`)."""
        await self._send_frame(memoryview(self.codec.dumps(obj)))

    async def _send_frame(self, body: memoryview) -> None:
        n = body.nbytes
        if n > 0x7FFFFFFF:
            parts: list[Any] = [_SHORT.pack(-1) + _LONG.pack(n), body]
        elif n <= _CONCAT_LIMIT:
            # One write: no Nagle delay between a header and its body on TCP.
            parts = [_SHORT.pack(n) + body]
        else:
            parts = [_SHORT.pack(n), body]
        async with self._send_lock:
            self._check_open()
            if not self._writable:
                raise ClosedError("this end of the pipe is not writable")
            if self._broken is not None:
                raise BrokenError(self._broken)
            await self._write_all(parts)

    async def _write_all(self, parts: list[Any]) -> None:
        written = 0
        total = sum(memoryview(p).nbytes for p in parts)
        try:
            while True:
                try:
                    sent = os.writev(self._fd, parts)
                except BlockingIOError:
                    await self._write_ready.wait()
                    self._check_open()
                    continue
                except (BrokenPipeError, ConnectionResetError) as exc:
                    self._broken = f"the peer has closed the connection ({exc.strerror})"
                    raise BrokenError(self._broken) from exc
                written += sent
                if written >= total:
                    return
                parts = _advance(parts, sent)
        except BaseException:
            if 0 < written < total and self._broken is None:
                self._broken = "a send was interrupted half-way through a message"
            raise

    # -- receiving --
    async def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receive one message as bytes.

        Args:
            maxlength: refuse a message longer than this (on top of
                ``max_message_size``); the connection is then closed, as
                multiprocessing does.

        Raises:
            PeerClosed: the peer closed the connection (an ``EOFError`` and
                anyio's ``EndOfStream``).
            FrameTooLarge: the announced length exceeds the limit (nothing was
                allocated for it).
            IncompleteFrame: the stream ended inside a message.
            ClosedError: this end is closed.
        """
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        return await self._recv_frame(maxlength)

    async def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Receive one message into the writable buffer *buf* at byte *offset*.

        Returns:
            The number of bytes of the message.

        Raises:
            BufferTooShort: the message does not fit; it is ``args[0]`` of the
                error (as in multiprocessing).
            ValueError: *offset* is negative or past the end of *buf*.
        """
        view = _as_bytes_view(buf)
        if offset < 0:
            raise ValueError("negative offset")
        if offset > view.nbytes:
            raise ValueError("offset too large")
        body = await self._recv_frame(None)
        size = len(body)
        if size > view.nbytes - offset:
            raise BufferTooShort(body)
        view[offset : offset + size] = body
        return size

    async def recv(self) -> Any:
        """Receive one message and decode it with the codec.

        Raises:
            UndecodableMessage: the codec could not decode the body (the
                connection stays usable: framing is intact).
            PeerClosed, FrameTooLarge, IncompleteFrame, ClosedError: as
                :meth:`recv_bytes`.
        """
        body = await self._recv_frame(None)
        try:
            return self.codec.loads(body)
        except Exception as exc:
            raise UndecodableMessage(
                f"cannot decode a {len(body)}-byte message with the {self.codec.name} codec: {exc}"
            ) from exc

    async def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether there is something to read (a message, or EOF) within *timeout* s.

        ``timeout=None`` waits without a limit; ``0`` (the default) only looks.
        """
        self._check_open()
        if self._rpos < len(self._rbuf) or self._body is not None or self._eof:
            return True
        if _fd_readable_now(self._fd):
            return True
        if timeout is not None and timeout <= 0:
            return False
        with anyio.move_on_after(timeout):
            await self._read_ready.wait()
            return True
        return False

    def _has_buffered(self) -> bool:
        return self._rpos < len(self._rbuf) or self._body is not None or self._eof

    async def _recv_frame(self, maxlength: int | None) -> bytes:
        async with self._recv_lock:
            self._check_open()
            if not self._readable:
                raise ClosedError("this end of the pipe is not readable")
            if self._body is not None:
                return await self._finish_body()
            header = 4
            while True:
                avail = len(self._rbuf) - self._rpos
                if avail >= 4:
                    (size,) = _SHORT.unpack_from(self._rbuf, self._rpos)
                    if size == -1:
                        header = 12
                        if avail >= 12:
                            (size,) = _LONG.unpack_from(self._rbuf, self._rpos + 4)
                            break
                    elif size < 0:
                        self.close()
                        raise RemoteProtocolError(f"invalid message length {size}")
                    else:
                        break
                await self._fill()
            limit = (
                self.max_message_size
                if maxlength is None
                else min(maxlength, self.max_message_size)
            )
            if size > limit:
                # Refused before a byte of it is allocated; the rest of the stream
                # is that message, so the connection cannot be used further.
                self.close()
                raise FrameTooLarge(size, limit)
            start = self._rpos + header
            have = len(self._rbuf) - start
            if have >= size:
                with memoryview(self._rbuf) as view:
                    body = bytes(view[start : start + size])
                self._consume(start + size)
                return body
            # A large message: the kernel copies it straight into the bytes
            # object that will be returned (a BytesIO's buffer, which
            # getvalue() hands over without a copy).
            big = io.BytesIO()
            big.seek(size - 1)
            big.write(b"\0")
            with big.getbuffer() as view, memoryview(self._rbuf) as buffered:
                view[:have] = buffered[start:]
            self._body = big
            self._body_filled = have
            self._rbuf.clear()
            self._rpos = 0
            return await self._finish_body()

    def _consume(self, end: int) -> None:
        if end >= len(self._rbuf):
            self._rbuf.clear()
            self._rpos = 0
        elif end > _CHUNK:
            del self._rbuf[:end]
            self._rpos = 0
        else:
            self._rpos = end

    async def _finish_body(self) -> bytes:
        body = self._body
        assert body is not None
        with body.getbuffer() as view:
            size = len(view)
            while self._body_filled < size:
                try:
                    n = os.readv(self._fd, [view[self._body_filled :]])
                except BlockingIOError:
                    await self._read_ready.wait()
                    self._check_open()
                    continue
                except ConnectionResetError as exc:
                    raise BrokenError("the peer reset the connection") from exc
                if n == 0:
                    self._eof = True
                    self._body = None
                    raise IncompleteFrame(bytes(view[: self._body_filled]))
                self._body_filled += n
        self._body = None
        self._body_filled = 0
        return body.getvalue()

    async def _fill(self) -> None:
        """Read what is there (at least one byte) into the buffer; EOF raises."""
        if self._rpos and self._rpos == len(self._rbuf):
            self._rbuf.clear()
            self._rpos = 0
        while True:
            if self._eof:
                chunk = b""
            else:
                try:
                    chunk = os.read(self._fd, _CHUNK)
                except BlockingIOError:
                    await self._read_ready.wait()
                    self._check_open()
                    continue
                except ConnectionResetError as exc:
                    raise BrokenError("the peer reset the connection") from exc
            if chunk:
                self._rbuf += chunk
                return
            self._eof = True
            pending = bytes(self._rbuf[self._rpos :])
            if pending:
                raise IncompleteFrame(pending)
            raise PeerClosed("the peer closed the connection")


def _advance(parts: list[Any], sent: int) -> list[Any]:
    out: list[Any] = []
    for part in parts:
        view = memoryview(part)
        if sent >= view.nbytes:
            sent -= view.nbytes
            continue
        out.append(view[sent:])
        sent = 0
    return out


def _readable_now(fds: Iterable[int]) -> set[int]:
    """Which of *fds* are readable (or at EOF / in error) right now, without waiting.

    ``poll`` rather than ``select``: it has no limit of 1024 on fd numbers.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return {fd for fd, _ in poller.poll(0)}


def _fd_readable_now(fd: int) -> bool:
    return bool(_readable_now((fd,)))


def _rebuild_connection(
    df: Any, readable: bool, writable: bool, codec: Codec, max_message_size: int
) -> Connection:
    return Connection(
        df.detach(), readable, writable, codec=codec, max_message_size=max_message_size
    )


def Pipe(
    duplex: bool = True,
    *,
    codec: CodecSpec = "pickle",
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> tuple[Connection, Connection]:
    """Return a pair of connected :class:`Connection` objects.

    Args:
        duplex: both ends send and receive (a socketpair); ``False`` gives
            ``(reader, writer)`` over an OS pipe, as multiprocessing does.
        codec: the codec of both ends.
        max_message_size: the largest message either end accepts.

    The ends are async context managers; either can be passed to a child
    process (:class:`anycore.ChildProcess` or :mod:`multiprocessing`).
    """
    codec = _codec(codec)  # a bad codec fails before any fd is opened
    if duplex:
        a, b = socket.socketpair()
        fds = (a.detach(), b.detach())
        return (
            Connection(fds[0], codec=codec, max_message_size=max_message_size),
            Connection(fds[1], codec=codec, max_message_size=max_message_size),
        )
    r, w = os.pipe()
    return (
        Connection(r, True, False, codec=codec, max_message_size=max_message_size),
        Connection(w, False, True, codec=codec, max_message_size=max_message_size),
    )


# -- wait --------------------------------------------------------------------------


async def wait_connections(objects: Iterable[T], timeout: float | None = None) -> list[T]:
    """Wait until some of *objects* are ready to read: multiprocessing.connection.wait.

    Args:
        objects: :class:`Connection` or :class:`Listener` objects, sockets,
            objects with ``fileno()`` or plain fds (a process sentinel, say).
        timeout: seconds at most; ``None`` waits without a limit.

    Returns:
        The ready objects (a Connection with a buffered message, or EOF,
        counts as ready); empty when *timeout* passed first.
    """
    items = list(objects)
    ready: list[T] = [o for o in items if isinstance(o, Connection) and o._has_buffered()]
    if ready:
        return ready
    fds: list[tuple[T, int]] = []
    for o in items:
        fd = o if isinstance(o, int) else o.fileno()  # type: ignore[attr-defined]
        fds.append((o, fd))
    now = _readable_now(fd for _, fd in fds)
    if now or (timeout is not None and timeout <= 0):
        return [o for o, fd in fds if fd in now]
    watchers: list[tuple[_FdReady, asyncio.Future[None]]] = []
    try:
        for o, fd in fds:
            watcher = o._read_ready if isinstance(o, Connection | Listener) else _FdReady(fd, False)
            watchers.append((watcher, watcher.future()))
        with anyio.move_on_after(timeout):
            await asyncio.wait([f for _, f in watchers], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for watcher, fut in watchers:
            watcher.discard(fut)
            if not fut.done():
                fut.cancel()
    now = _readable_now(fd for _, fd in fds)
    return [o for o, fd in fds if fd in now]


# -- authentication ----------------------------------------------------------------

_CHALLENGE = b"#CHALLENGE#"
_WELCOME = b"#WELCOME#"
_FAILURE = b"#FAILURE#"
_MESSAGE_LENGTH = 40  # random bytes in a modern challenge
_LEGACY_LENGTHS = (20, 16)  # a legacy (md5-only) challenge, an unprefixed md5 digest
_ALLOWED_DIGESTS = frozenset({b"md5", b"sha256", b"sha384", b"sha3_256", b"sha3_384"})
_MAX_DIGEST_NAME = max(len(d) for d in _ALLOWED_DIGESTS)
_HANDSHAKE_MAX = 256


def _digest_and_payload(message: bytes) -> tuple[str, bytes]:
    if len(message) in _LEGACY_LENGTHS:
        # A legacy challenge or a legacy raw HMAC-MD5 answer; every modern
        # message is longer than both.
        return "md5", message
    if message.startswith(b"{"):
        curly = message.find(b"}", 1, _MAX_DIGEST_NAME + 2)
        if curly > 0 and message[1:curly] in _ALLOWED_DIGESTS:
            return message[1:curly].decode("ascii"), message[curly + 1 :]
    raise AuthenticationError(
        "unsupported message length, missing digest prefix or unsupported digest"
    )


def _create_response(authkey: bytes, message: bytes) -> bytes:
    name, _ = _digest_and_payload(message)
    if name == "md5" and len(message) in _LEGACY_LENGTHS:
        return hmac.new(authkey, message, "md5").digest()
    # The MAC covers the whole challenge, digest prefix included.
    mac = hmac.new(authkey, message, name).digest()
    return b"{" + name.encode("ascii") + b"}" + mac


def _verify_response(authkey: bytes, message: bytes, response: bytes) -> None:
    name, mac = _digest_and_payload(response)
    try:
        expected = hmac.new(authkey, message, name).digest()
    except ValueError as exc:  # pragma: no cover - a digest this build lacks
        raise AuthenticationError(f"digest {name!r} is not available") from exc
    if len(expected) != len(mac) or not hmac.compare_digest(expected, mac):
        raise AuthenticationError("digest received was wrong")


def _check_authkey(authkey: object) -> bytes:
    if not isinstance(authkey, bytes):
        raise TypeError(f"authkey must be bytes, not {type(authkey).__name__}")
    return authkey


async def _handshake_recv(conn: Connection) -> bytes:
    try:
        return await conn.recv_bytes(_HANDSHAKE_MAX)
    except FrameTooLarge as exc:
        raise AuthenticationError(
            f"handshake message of {exc.size} bytes (the limit is {_HANDSHAKE_MAX})"
        ) from exc
    except (PeerClosed, IncompleteFrame, RemoteProtocolError) as exc:
        raise AuthenticationError(f"the peer broke off the handshake: {exc}") from exc


async def deliver_challenge(conn: Connection, authkey: bytes, digest: str = "sha256") -> None:
    """Challenge the peer to prove it knows *authkey* (the accepting side's half).

    Raises:
        AuthenticationError: the answer was wrong or malformed (the peer is
            told ``#FAILURE#``).
    """
    authkey = _check_authkey(authkey)
    if digest.encode("ascii") not in _ALLOWED_DIGESTS:
        raise ValueError(f"digest {digest!r} is not one of the allowed digests")
    message = b"{" + digest.encode("ascii") + b"}" + os.urandom(_MESSAGE_LENGTH)
    # A legacy peer takes all of it as its challenge and answers with raw HMAC-MD5.
    await conn.send_bytes(_CHALLENGE + message)
    response = await _handshake_recv(conn)
    try:
        _verify_response(authkey, message, response)
    except AuthenticationError:
        try:
            await conn.send_bytes(_FAILURE)
        except (BrokenError, ClosedError):
            pass
        raise
    await conn.send_bytes(_WELCOME)


async def answer_challenge(conn: Connection, authkey: bytes) -> None:
    """Answer the peer's challenge with an HMAC of it under *authkey*.

    Raises:
        AuthenticationError: the peer sent no proper challenge or rejected
            the answer.
    """
    authkey = _check_authkey(authkey)
    message = await _handshake_recv(conn)
    if not message.startswith(_CHALLENGE):
        raise AuthenticationError("protocol error: expected a challenge")
    message = message[len(_CHALLENGE) :]
    if len(message) < _LEGACY_LENGTHS[0]:
        raise AuthenticationError(f"challenge too short: {len(message)} bytes")
    await conn.send_bytes(_create_response(authkey, message))
    response = await _handshake_recv(conn)
    if response != _WELCOME:
        raise AuthenticationError("digest sent was rejected")


async def _authenticate(
    conn: Connection, authkey: bytes, server: bool, timeout: float | None
) -> None:
    try:
        with anyio.fail_after(timeout):
            if server:
                await deliver_challenge(conn, authkey)
                await answer_challenge(conn, authkey)
            else:
                await answer_challenge(conn, authkey)
                await deliver_challenge(conn, authkey)
    except TimeoutError as exc:
        conn.close()
        raise AuthenticationError(f"the handshake did not finish within {timeout} s") from exc
    except (BrokenError, ClosedError) as exc:
        conn.close()
        raise AuthenticationError(f"the connection broke during the handshake: {exc}") from exc
    except BaseException:
        conn.close()
        raise


# -- addresses ---------------------------------------------------------------------

Address = tuple[str, int] | str | bytes


def _family_of(address: Address, family: str | int | None) -> int:
    if family is not None:
        if isinstance(family, str):
            try:
                return {
                    "AF_INET": socket.AF_INET,
                    "AF_INET6": socket.AF_INET6,
                    "AF_UNIX": socket.AF_UNIX,
                }[family]
            except KeyError:
                raise ValueError(f"unsupported family {family!r}") from None
        return family
    if isinstance(address, tuple):
        return socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    if isinstance(address, str | bytes):
        return socket.AF_UNIX
    raise TypeError(f"address must be (host, port) or a Unix socket path, not {address!r}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a name: it could resolve anywhere


class Listener:
    """A bound, listening socket whose :meth:`accept` returns Connections.

    multiprocessing.connection.Listener, async; wire-compatible with the
    standard library's :func:`multiprocessing.connection.Client`.  The socket
    is bound when the Listener is made; ``async with`` closes it (and removes
    a Unix socket file) at the end.

    Args:
        address: ``(host, port)`` for TCP (port 0 picks one; read
            :attr:`address`), or a filesystem path for a Unix socket.
            Default: ``("127.0.0.1", 0)``.
        family: ``"AF_INET"``, ``"AF_INET6"``, ``"AF_UNIX"`` (or the socket
            constant); default: from *address*.
        backlog: the listen backlog.
        authkey: when given, every accepted peer must pass the HMAC
            challenge-response (both ways) before :meth:`accept` returns it.
        codec: the codec of accepted connections.
        max_message_size: the largest message an accepted connection takes.
        allow_unauthenticated: permit a non-loopback TCP address without an
            authkey (with a codec other than pickle).
        handshake_timeout: seconds a peer gets to finish the handshake.

    Raises:
        InsecureListener: a non-loopback address without an authkey and
            without ``allow_unauthenticated=True``, or with it but with the
            pickle codec (unpickling from anyone runs anyone's code).
        OSError: the address cannot be bound.
    """

    def __init__(
        self,
        address: Address | None = None,
        family: str | int | None = None,
        backlog: int = 128,
        authkey: bytes | None = None,
        *,
        codec: CodecSpec = "pickle",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        allow_unauthenticated: bool = False,
        handshake_timeout: float | None = 10.0,
    ) -> None:
        if authkey is not None:
            _check_authkey(authkey)
        self._tmpdir: str | None = None
        if address is None:
            fam = socket.AF_INET if family is None else _family_of("", family)
            if fam == socket.AF_UNIX:
                # A fresh private directory: no other user can guess or squat the path.
                self._tmpdir = tempfile.mkdtemp(prefix="anycore-")
                address = os.path.join(self._tmpdir, "listener.sock")
            else:
                address = ("::1", 0) if fam == socket.AF_INET6 else ("127.0.0.1", 0)
        fam = _family_of(address, family)
        self._codec = _codec(codec)
        if fam != socket.AF_UNIX and authkey is None:
            assert isinstance(address, tuple)
            host = address[0]
            if not _is_loopback(host):
                if not allow_unauthenticated:
                    raise InsecureListener(
                        f"refusing to listen on non-loopback address {host!r} without an "
                        "authkey; pass authkey=... (or allow_unauthenticated=True with a "
                        "json or msgpack codec)"
                    )
                if self._codec.name == "pickle":
                    raise InsecureListener(
                        "an unauthenticated non-loopback Listener cannot use the pickle "
                        "codec: unpickling runs the sender's code; use codec='json' or 'msgpack'"
                    )
        self._authkey = authkey
        self._max = max_message_size
        self._handshake_timeout = handshake_timeout
        self._family = fam
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            if fam != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            if self._tmpdir is not None:
                os.rmdir(self._tmpdir)
            raise
        self._sock: socket.socket | None = sock
        abstract = isinstance(address, str | bytes) and address[:1] in ("\0", b"\0")
        self._unlink = (
            os.fsdecode(address)
            if fam == socket.AF_UNIX and isinstance(address, str | bytes) and not abstract
            else None
        )
        self._address: Address = sock.getsockname()
        self._read_ready = _FdReady(sock.fileno(), write=False)
        self.last_accepted: Any = None

    @property
    def address(self) -> Address:
        """The bound address (with the real port when port 0 was asked for)."""
        return self._address

    def fileno(self) -> int:
        """The listening socket's fd."""
        if self._sock is None:
            raise ClosedError("the listener is closed")
        return self._sock.fileno()

    async def accept(self) -> Connection:
        """Wait for a peer, authenticate it when there is an authkey, return it.

        A peer that fails the handshake (wrong key, garbage, silence past
        ``handshake_timeout``) is disconnected and this call raises; the
        Listener itself keeps working: call :meth:`accept` again.

        Raises:
            AuthenticationError: the peer failed the handshake.
            ClosedError: the listener is closed.
        """
        conn = await self._accept_unauthenticated()
        await self._authenticate_accepted(conn)
        return conn

    async def _accept_unauthenticated(self) -> Connection:
        """The next peer, not yet authenticated: call _authenticate_accepted before use.

        For servers that run each handshake in the peer's own task, so that a
        slow or silent peer cannot hold up the accept loop.
        """
        while True:
            if self._sock is None:
                raise ClosedError("the listener is closed")
            try:
                sock, addr = self._sock.accept()
                break
            except (BlockingIOError, InterruptedError):
                await self._read_ready.wait()
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the peer gave up before we accepted it
                raise
        if self._family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock.detach(), codec=self._codec, max_message_size=self._max)
        self.last_accepted = addr
        return conn

    async def _authenticate_accepted(self, conn: Connection) -> None:
        if self._authkey is not None:
            await _authenticate(conn, self._authkey, True, self._handshake_timeout)

    async def serve(
        self,
        handler: Callable[[Connection], Awaitable[object]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve peers until cancelled (or the listener is closed).

        Each accepted peer gets its own task: the handshake runs there (so a
        slow or silent peer holds up nobody), then ``await handler(conn)``;
        the connection is closed when the handler returns.  A peer that
        fails the handshake is logged and dropped; an exception from a
        handler is logged with its traceback and ends only that connection.

        Args:
            handler: ``async def handler(conn)``, called with each
                authenticated Connection.
            task_status: for ``await task_group.start(listener.serve, handler)``:
                reported once the loop accepts.
        """
        async with anyio.create_task_group() as tg:
            task_status.started()
            while True:
                try:
                    conn = await self._accept_unauthenticated()
                except ClosedError:
                    return
                tg.start_soon(self._serve_one, handler, conn)

    async def _serve_one(
        self, handler: Callable[[Connection], Awaitable[object]], conn: Connection
    ) -> None:
        with conn:
            try:
                await self._authenticate_accepted(conn)
            except AuthenticationError as exc:
                log.warning("listener %r: refused a peer: %s", self._address, exc)
                return
            try:
                await handler(conn)
            except Exception:
                log.exception("listener %r: the handler failed", self._address)

    def close(self) -> None:
        """Stop listening (idempotent); a Unix socket file is removed."""
        sock, self._sock = self._sock, None
        if sock is not None:
            self._read_ready.close()
            sock.close()
            for remove, path in ((os.unlink, self._unlink), (os.rmdir, self._tmpdir)):
                if path is not None:
                    try:
                        remove(path)
                    except OSError:
                        pass

    async def aclose(self) -> None:
        """Close the listener (see :meth:`close`)."""
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "open"
        return f"<anycore.Listener address={self._address!r} {state}>"


class Client:
    """Connect to a Listener (anycore's or the standard library's).

    ``conn = await Client(address, authkey=key)``, or
    ``async with Client(address, authkey=key) as conn:`` which closes the
    Connection at the end.

    Args:
        address: ``(host, port)`` or a Unix socket path.
        family: as for :class:`Listener`.
        authkey: answer the listener's challenge and challenge it back.
        codec: the Connection's codec.
        max_message_size: the largest message the Connection accepts.
        handshake_timeout: seconds the handshake may take.

    Raises:
        AuthenticationError: the handshake failed (wrong key on either side).
        OSError: connecting failed.
    """

    def __init__(
        self,
        address: Address,
        family: str | int | None = None,
        authkey: bytes | None = None,
        *,
        codec: CodecSpec = "pickle",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        handshake_timeout: float | None = 10.0,
    ) -> None:
        if authkey is not None:
            _check_authkey(authkey)
        self._address = address
        self._family = _family_of(address, family)
        self._authkey = authkey
        self._codec = _codec(codec)
        self._max = max_message_size
        self._timeout = handshake_timeout
        self._conn: Connection | None = None

    async def connect(self) -> Connection:
        """Connect (and authenticate) and return the Connection."""
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self._family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.get_running_loop().sock_connect(sock, self._address)
        except BaseException:
            sock.close()
            raise
        conn = Connection(sock.detach(), codec=self._codec, max_message_size=self._max)
        if self._authkey is not None:
            await _authenticate(conn, self._authkey, False, self._timeout)
        return conn

    def __await__(self) -> Generator[Any, None, Connection]:
        return self.connect().__await__()

    async def __aenter__(self) -> Connection:
        self._conn = await self.connect()
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
