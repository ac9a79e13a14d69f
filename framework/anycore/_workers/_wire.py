"""The child wire: what crosses between a parent and its Python children.

Two layers, both free of any process machinery:

* serialisation: pickle by default, cloudpickle when it is installed and pickle
  cannot carry the object (lambdas, closures, functions of ``__main__``), with
  code objects keeping their file name so remote tracebacks name the user's
  file; an exception travels as ``(pickled exception or None, type name,
  message, traceback text)`` and remote tracebacks start at the user's frame
  (the worker loop's and ``asyncio.run``'s frames are cut);
* a duplex *channel*: a connected stream socket (a socketpair) carrying
  length-prefixed frames (a 4-byte big-endian size, then the payload), bounded
  by ``max_frame_size`` on both sides (a larger announced size fails with
  FrameTooLarge as soon as its header is read).  The loop side (:class:`Channel`) is wired to
  the loop with ``add_reader`` / ``add_writer`` so sends and receives never
  block it; the child side (:class:`FrameSocket`) is plain blocking code.

ChildProcess (``_child``), the process pool (``_pool_processes``) and the
managers each add their own protocol over the frames.

Rejected: ``multiprocessing.connection.Connection`` on the loop side (its
reads and writes block); ``loop.connect_accepted_socket`` transports (a
protocol object per frame path and no synchronous drain of what a dead child
left in the socket, which crash handling needs).
"""

from __future__ import annotations

import asyncio
import collections
import io
import os
import pickle
import socket
import struct
import traceback
import types
from collections.abc import Callable
from typing import Any, ClassVar

from .._net._framing import LengthPrefixFramer
from ..errors import FrameTooLarge, RemoteError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "Channel",
    "FrameSocket",
    "dumps",
    "dumps_callable",
    "dumps_carrying",
    "exception_payload",
    "rebuild_exception",
]

_HEADER = struct.Struct("!I")
_HIGHEST = pickle.HIGHEST_PROTOCOL
#: The largest frame either side accepts unless told otherwise.
DEFAULT_MAX_FRAME = 1 << 30


# -- serialisation ------------------------------------------------------------

_cloudpickle: Any = None
_cloudpickle_checked = False


def _get_cloudpickle() -> Any:
    global _cloudpickle, _cloudpickle_checked
    if not _cloudpickle_checked:
        try:
            import cloudpickle

            _cloudpickle = cloudpickle
        except ImportError:  # pragma: no cover - cloudpickle is in the test extras
            _cloudpickle = None
        _cloudpickle_checked = True
    return _cloudpickle


_file_keeping_pickler: Any = None


def _cloudpickle_dumps(obj: object) -> bytes:
    """cloudpickle, but code keeps its file name.

    cloudpickle writes every code object it carries by value with the file
    name ``<dynamic-code>``, so a traceback from the child points nowhere.  A
    pickler whose code reducer puts the real name back makes the child's
    frames name the user's file and line (and show the line's source).
    """
    global _file_keeping_pickler
    cp = _get_cloudpickle()
    if _file_keeping_pickler is None:
        original = cp.Pickler.dispatch_table.get(types.CodeType)
        if original is None:  # pragma: no cover - another cloudpickle design
            _file_keeping_pickler = cp.Pickler
        else:

            def reduce_code(code: types.CodeType) -> Any:
                rebuild, args = original(code)
                fixed = tuple(
                    code.co_filename if isinstance(a, str) and a == "<dynamic-code>" else a
                    for a in args
                )
                return rebuild, fixed

            class FileKeepingPickler(cp.Pickler):  # type: ignore[misc, name-defined]
                dispatch_table: ClassVar[Any] = collections.ChainMap(
                    {types.CodeType: reduce_code}, cp.Pickler.dispatch_table
                )

            _file_keeping_pickler = FileKeepingPickler
    buf = io.BytesIO()
    _file_keeping_pickler(buf, protocol=_HIGHEST).dump(obj)
    return buf.getvalue()


def dumps(obj: object) -> bytes:
    """Pickle *obj*; fall back to cloudpickle when pickle cannot carry it."""
    try:
        return pickle.dumps(obj, _HIGHEST)
    except (pickle.PicklingError, AttributeError, TypeError):
        cp = _get_cloudpickle()
        if cp is None:
            raise
        return _cloudpickle_dumps(obj)


def dumps_callable(fn: object) -> bytes:
    """Pickle a callable, by value (cloudpickle) when it cannot go by reference.

    Functions defined in ``__main__``, in another function or as lambdas do
    not exist under that name in the child; cloudpickle, when installed,
    carries their code instead.
    """
    return dumps_carrying(fn, getattr(fn, "__module__", None), getattr(fn, "__qualname__", ""))


def dumps_carrying(obj: object, module: str | None, qualname: str) -> bytes:
    """Pickle *obj*, which holds the callable or class ``module.qualname``:
    with cloudpickle (by value) when that name does not exist in the child
    (``__main__``, a local or a lambda), else as :func:`dumps` does."""
    if (module == "__main__" or "<" in qualname) and _get_cloudpickle() is not None:
        return _cloudpickle_dumps(obj)
    return dumps(obj)


def exception_payload(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    """Describe an exception for the other process.

    Returns:
        ``(pickled exception or None, type name, message, formatted traceback)``.
    """
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _drop_machinery_frames(report)
    tb = "".join(report.format())
    try:
        data: bytes | None = dumps(exc)
    except Exception:
        data = None
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable>"
    return data, kind, message[:10_000], tb


_MACHINERY = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(asyncio.__file__))


def _drop_machinery_frames(report: traceback.TracebackException) -> None:
    """Drop the leading frames of anycore's worker loop (and ``asyncio.run``
    around a coroutine target): the traceback starts in the user's code."""
    seen: set[int] = set()
    node: traceback.TracebackException | None = report
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        frames = list(node.stack)
        start = 0
        while start < len(frames) - 1 and frames[start].filename.startswith(_MACHINERY):
            start += 1
        if start:
            node.stack = traceback.StackSummary.from_list(frames[start:])
        node = node.__cause__ or node.__context__


def rebuild_exception(
    payload: tuple[bytes | None, str, str, str], where: str
) -> tuple[BaseException | None, RemoteError]:
    """Turn :func:`exception_payload`'s tuple back into exceptions.

    Returns:
        ``(original exception or None when it could not be rebuilt, RemoteError)``.
    """
    data, kind, message, tb = payload
    original: BaseException | None = None
    if data is not None:
        try:
            loaded = pickle.loads(data)
        except Exception:
            loaded = None
        if isinstance(loaded, BaseException):
            original = loaded
    remote = RemoteError(f"{kind}: {message} (raised in {where})", tb)
    return original, remote


# -- framing over a socket ----------------------------------------------------


class FrameSocket:
    """Blocking, child-side end of a channel: length-prefixed frames.

    Args:
        sock: a connected stream socket.
        max_frame_size: frames announced larger than this raise FrameTooLarge.
    """

    def __init__(self, sock: socket.socket, max_frame_size: int = DEFAULT_MAX_FRAME) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.max_frame_size = max_frame_size
        self._framer = LengthPrefixFramer("!I", max_frame_size)
        self.eof = False

    def recv_frame(self) -> bytes | None:
        """Block until a whole frame arrived; None at EOF (a cut frame is dropped)."""
        framer = self._framer
        while True:
            frame = framer.next_frame()
            if frame is not None:
                return frame
            if self.eof:
                return None
            data = self.sock.recv(262144)
            if not data:
                self.eof = True
                continue
            framer.feed(data)

    def poll_frames(self) -> list[bytes]:
        """Return the whole frames available now, without blocking."""
        framer = self._framer
        if not self.eof:
            while True:
                try:
                    data = self.sock.recv(262144, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                if not data:
                    self.eof = True
                    break
                framer.feed(data)
        frames: list[bytes] = []
        while (frame := framer.next_frame()) is not None:
            frames.append(frame)
        return frames

    def send_frame(self, payload: bytes) -> None:
        """Send one frame (blocks while the peer's buffer is full)."""
        if len(payload) > self.max_frame_size:
            raise FrameTooLarge(len(payload), self.max_frame_size)
        if len(payload) < 65536:
            self.sock.sendall(_HEADER.pack(len(payload)) + payload)
        else:
            self.sock.sendall(_HEADER.pack(len(payload)))
            self.sock.sendall(payload)


class Channel:
    """Loop-side end of a channel: frames in through a callback, out unblocking.

    Reads run in an ``add_reader`` callback that hands every complete frame to
    *on_frame* (bytes, cut by the sans-IO :class:`LengthPrefixFramer`).  Writes
    are queued and flushed once per loop iteration with non-blocking sends, the
    rest when the socket is writable again.

    Args:
        sock: a connected stream socket (made non-blocking).
        on_frame: called with each received frame.
        on_eof: called once when the peer closed its end or the socket failed.
        max_frame_size: a larger announced frame ends the channel with
            FrameTooLarge passed to *on_eof*.
    """

    def __init__(
        self,
        sock: socket.socket,
        on_frame: Callable[[bytes], None],
        on_eof: Callable[[BaseException | None], None],
        max_frame_size: int = DEFAULT_MAX_FRAME,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._on_frame = on_frame
        self._on_eof = on_eof
        self.max_frame_size = max_frame_size
        self._framer = LengthPrefixFramer("!I", max_frame_size)
        self._out: list[bytes] = []
        self._pending = b""
        self._flush_scheduled = False
        self._writer_added = False
        self.closed = False
        self.eof = False
        self._loop.add_reader(self._fd, self._on_readable)

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued for sending and not yet accepted by the socket."""
        return len(self._pending) + sum(len(b) for b in self._out)

    # reading
    def _on_readable(self) -> bool:
        """One read and its frames; False when nothing more can be read now."""
        try:
            data = self._sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._finish(exc)
            return False
        if not data:
            self._finish(None)
            return False
        self._feed(data)
        return True

    def _feed(self, data: bytes) -> None:
        framer = self._framer
        on_frame = self._on_frame
        try:
            framer.feed(data)
            while (frame := framer.next_frame()) is not None:
                on_frame(frame)
                if self.closed:
                    return
        except FrameTooLarge as exc:
            self._finish(exc)

    def drain_now(self) -> None:
        """Read and dispatch everything the peer left in the socket, now.

        Used when the peer process is known to have exited: what it wrote
        before dying is in the socket buffer.
        """
        for _ in range(100_000):  # bounded: 25 GiB at 256 KiB per read
            if self.closed or self.eof or not self._on_readable():
                return

    def _finish(self, exc: BaseException | None) -> None:
        if self.eof:
            return
        self.eof = True
        self._loop.remove_reader(self._fd)
        self._on_eof(exc)

    # writing
    def send_frame(self, payload: bytes) -> None:
        """Queue one frame; it leaves at the end of this loop iteration.

        Raises:
            FrameTooLarge: *payload* is larger than ``max_frame_size``.
        """
        if self.closed:
            return
        size = len(payload)
        if size > self.max_frame_size:
            raise FrameTooLarge(size, self.max_frame_size)
        self._out.append(_HEADER.pack(size))
        self._out.append(payload)
        if not self._flush_scheduled and not self._writer_added:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed:
            return
        data = self._pending + b"".join(self._out) if self._pending else b"".join(self._out)
        self._out.clear()
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # The peer is gone; the reader side reports it.
            self._pending = b""
            return
        self._pending = data[sent:]
        if self._pending and not self._writer_added:
            self._writer_added = True
            self._loop.add_writer(self._fd, self._on_writable)
        elif not self._pending and self._writer_added:
            self._writer_added = False
            self._loop.remove_writer(self._fd)

    def _on_writable(self) -> None:
        self._flush()

    def shutdown_write(self) -> None:
        """Send EOF after the queued frames (the peer's recv returns b'')."""
        self._flush()
        if not self._pending:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        """Stop reading and writing and close the socket."""
        if self.closed:
            return
        self.closed = True
        if not self.eof:
            self.eof = True
            self._loop.remove_reader(self._fd)
        if self._writer_added:
            self._loop.remove_writer(self._fd)
            self._writer_added = False
        self._out.clear()
        self._pending = b""
        self._sock.close()
