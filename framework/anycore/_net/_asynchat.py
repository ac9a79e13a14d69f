"""asynchat compatibility: ``AsyncChat`` runs classic ``async_chat`` subclasses.

This module owns :class:`AsyncChat`, a :class:`~anycore.Handler` that speaks
``asynchat.async_chat``'s interface (removed from the standard library in
Python 3.12): ``set_terminator`` (bytes, an int byte count, or None),
``collect_incoming_data`` / ``found_terminator``, ``push``,
``push_with_producer``, ``close_when_done``, ``discard_buffers`` and the
``ac_in_buffer_size`` / ``ac_out_buffer_size`` knobs, plus
:func:`simple_producer`.  A classic subclass keeps its methods; only its base
class and the loop call change (``asyncore.loop()`` becomes
``anycore.serve(...)``).

Input: the handler takes raw chunks (:class:`~anycore.RawFramer` cut at
``ac_in_buffer_size``) and applies asynchat's algorithm itself, because a
terminator may change inside ``found_terminator`` between two frames of one
read.  Unlike asynchat it walks each chunk with an offset instead of
re-slicing the buffer after every terminator (which is quadratic in the number
of lines per read), and it keeps at most ``len(terminator) - 1`` bytes between
reads (a possible terminator prefix): everything else is handed to
``collect_incoming_data`` at once, as asynchat does.

Output: ``push`` sends at once when no producer is queued (replies made while
a read is handled still leave in one write per read, like every handler);
producers are pulled until ``write_high_water`` bytes were produced, then
pulling resumes from a task once the transport's buffer has drained - so a
large producer never sits in memory whole.

Rejected: a framer per terminator kind switched from ``set_terminator``
(asynchat delivers partial data before the terminator arrives, which framers
do not, and switching per line costs more than scanning); emulating asyncore's
``readable()`` / ``writable()`` polling (there is no polling loop to ask).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Protocol

import anyio
import anyio.lowlevel

from ..errors import BrokenError, ClosedError
from ._framing import Framer, RawFramer
from ._handler import Handler

__all__ = ["AsyncChat", "Producer", "simple_producer"]

logger = logging.getLogger("anycore.asynchat")


class Producer(Protocol):
    """What ``push_with_producer`` accepts: ``more()`` returns b"" when done."""

    def more(self) -> bytes:
        """Return the next piece of data, or b"" when there is no more."""
        ...


class simple_producer:
    """A producer handing out ``data`` in pieces of ``buffer_size`` bytes.

    Args:
        data: the bytes to produce.
        buffer_size: the size of each piece.
    """

    def __init__(self, data: bytes, buffer_size: int = 512) -> None:
        self.data = data
        self.buffer_size = buffer_size

    def more(self) -> bytes:
        """Return the next piece, or b"" at the end."""
        if len(self.data) > self.buffer_size:
            result = self.data[: self.buffer_size]
            self.data = self.data[self.buffer_size :]
            return result
        result = self.data
        self.data = b""
        return result


_background: set[asyncio.Task[None]] = set()


def _start_background(fn: Callable[[], Awaitable[None]], name: str) -> None:
    """Start ``fn()`` outside the caller's scope, on asyncio or trio."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: the portable driver on trio
        import trio

        trio.lowlevel.spawn_system_task(fn, name=name)
        return

    async def runner() -> None:
        await fn()

    task = loop.create_task(runner(), name=name)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _prefix_at_end(data: bytes, term: bytes) -> int:
    """Length of the longest suffix of ``data`` that is a proper prefix of ``term``."""
    n = len(term) - 1
    while n and not data.endswith(term[:n]):
        n -= 1
    return n


class AsyncChat(Handler):
    """``asynchat.async_chat`` on anycore: subclass it like the original.

    Override :meth:`collect_incoming_data` and :meth:`found_terminator`;
    call :meth:`set_terminator`, :meth:`push`, :meth:`push_with_producer` and
    :meth:`close_when_done`.  :meth:`handle_close` runs once when the
    connection ends (the peer closed, an error, or ``close_when_done``).

    Args:
        sock: must be None: anycore accepts and connects sockets itself
            (``anycore.serve(factory, endpoint)`` / ``anycore.connect``).
        map: ignored (asyncore's socket map).

    Attributes:
        ac_in_buffer_size: the largest chunk handed to the terminator logic.
        ac_out_buffer_size: the piece size for pushed data and producers.
        use_encoding: encode ``str`` terminators with :attr:`encoding`.
        encoding: the encoding for ``str`` terminators.
        addr: the peer's address once connected (asyncore's attribute).
    """

    ac_in_buffer_size: ClassVar[int] = 65536
    ac_out_buffer_size: ClassVar[int] = 65536
    use_encoding: ClassVar[int] = 0
    encoding: ClassVar[str] = "latin-1"

    addr: Any = None

    def __init__(self, sock: object = None, map: object = None) -> None:
        if sock is not None:
            raise TypeError(
                "AsyncChat does not adopt sockets: serve the class with "
                "anycore.serve(factory, 'tcp://host:port') and pass sock=None"
            )
        self.ac_in_buffer = b""
        self.incoming: list[bytes] = []
        self.producer_fifo: deque[bytes | Producer | None] = deque()
        self.terminator: bytes | int | None = None
        self._closed_called = False
        self._sending = False
        self._sender_scope: anyio.CancelScope | None = None

    # -- asynchat's interface ----------------------------------------------------

    def set_terminator(self, term: bytes | str | int | None) -> None:
        """Set what ends an input unit.

        Args:
            term: a byte string (``found_terminator`` runs after it), an
                int (after that many bytes), or None (never: all data goes to
                ``collect_incoming_data``).

        Raises:
            ValueError: a negative byte count.
        """
        if isinstance(term, str):
            if not self.use_encoding:
                raise TypeError("str terminators need use_encoding = 1 (asynchat's rule)")
            term = term.encode(self.encoding)
        elif isinstance(term, int) and term < 0:
            raise ValueError("the number of received bytes must be positive")
        self.terminator = term

    def get_terminator(self) -> bytes | int | None:
        """Return the current terminator (for a count: the bytes still expected)."""
        return self.terminator

    def collect_incoming_data(self, data: bytes) -> None:
        """Called with received data that is not a terminator; override it.

        Raises:
            NotImplementedError: always, unless overridden.
        """
        raise NotImplementedError("must be implemented in subclass")

    def found_terminator(self) -> None:
        """Called when the terminator (or the byte count) was reached; override it.

        Raises:
            NotImplementedError: always, unless overridden.
        """
        raise NotImplementedError("must be implemented in subclass")

    def _collect_incoming_data(self, data: bytes) -> None:
        """asynchat's helper: append ``data`` to :attr:`incoming`."""
        self.incoming.append(data)

    def _get_data(self) -> bytes:
        """asynchat's helper: join and clear :attr:`incoming`."""
        data = b"".join(self.incoming)
        del self.incoming[:]
        return data

    def push(self, data: bytes) -> None:
        """Queue ``data`` for sending, after anything queued before it.

        Raises:
            TypeError: ``data`` is not bytes-like.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data argument must be byte-ish ({type(data)!r})")
        if self.producer_fifo:
            self.producer_fifo.append(bytes(data))
            self.initiate_send()
        else:
            self.send(bytes(data))

    def push_with_producer(self, producer: Producer) -> None:
        """Queue a producer: its ``more()`` is called until it returns b"".

        Args:
            producer: any object with a ``more() -> bytes`` method.
        """
        self.producer_fifo.append(producer)
        self.initiate_send()

    def close_when_done(self) -> None:
        """Close the connection once everything queued has been sent."""
        self.producer_fifo.append(None)
        self.initiate_send()

    def discard_buffers(self) -> None:
        """Drop unprocessed input and everything queued for output."""
        self.ac_in_buffer = b""
        del self.incoming[:]
        self.producer_fifo.clear()

    def initiate_send(self) -> None:
        """Send queued data, pulling producers up to ``write_high_water`` bytes.

        When more is queued, a background task carries on each time the
        transport's buffer has drained below its low-water mark.
        """
        self._pull()
        if self.producer_fifo and not self._sending and not self.is_closing():
            self._sending = True
            _start_background(self._send_later, f"anycore-asynchat-send-{self.connection_id}")

    def _pull(self) -> None:
        fifo = self.producer_fifo
        budget = self.write_high_water
        sent = 0
        while fifo and sent < budget:
            first = fifo[0]
            if first is None:
                fifo.clear()
                self.close()
                self._call_handle_close()
                return
            if isinstance(first, bytes):
                fifo.popleft()
                data = first
            else:
                data = first.more()
                if not data:
                    fifo.popleft()
                    continue
            self.send(data)
            sent += len(data)

    async def _send_later(self) -> None:
        try:
            with anyio.CancelScope() as scope:
                self._sender_scope = scope
                while self.producer_fifo and not self.is_closing():
                    await self.drain()
                    # A turn for the loop even when the transport took everything.
                    await anyio.lowlevel.checkpoint()
                    if self.is_closing():
                        return
                    self._pull()
        except (ClosedError, BrokenError):
            pass  # the connection ended; connection_lost cleans up
        except Exception:
            logger.exception("connection %s: a producer failed; aborting", self.connection_id)
            self.abort()
        finally:
            self._sending = False
            self._sender_scope = None

    def handle_close(self) -> None:
        """Called once when the connection ends; the default closes it."""
        self.close()

    def handle_connect(self) -> None:
        """Called when a client-side connection is up (``anycore.connect``)."""

    def log(self, message: str) -> None:
        """asyncore's ``log``: log ``message`` at debug level."""
        logger.debug("log: %s", message)

    def log_info(self, message: str, type: str = "info") -> None:
        """asyncore's ``log_info``: log ``message`` at the level named by ``type``."""
        level = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
        logger.log(level.get(type, logging.INFO), "%s", message)

    @property
    def connected(self) -> bool:
        """Whether the connection is up and not closing."""
        return self._conn is not None and not self.is_closing()

    @property
    def socket(self) -> Any:
        """The connection's socket object (asyncore's attribute), or None."""
        return self.get_extra_info("socket")

    # -- Handler plumbing ------------------------------------------------------------

    def make_framer(self) -> Framer:
        """Raw chunks of at most ``ac_in_buffer_size`` bytes."""
        return RawFramer(max_chunk=self.ac_in_buffer_size)

    def connection_made(self) -> None:
        """Record :attr:`addr`; on the client side call :meth:`handle_connect`."""
        if self.addr is None:
            self.addr = self.peer
        if self.server is None:
            self.handle_connect()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Stop the sender task and call :meth:`handle_close` (once)."""
        scope = self._sender_scope
        if scope is not None:
            scope.cancel()
        self._call_handle_close()

    def _call_handle_close(self) -> None:
        if not self._closed_called:
            self._closed_called = True
            self.handle_close()

    def frame_received(self, frame: bytes) -> None:
        """Run asynchat's terminator logic over one received chunk."""
        buf = self.ac_in_buffer + frame if self.ac_in_buffer else frame
        self.ac_in_buffer = b""
        pos = 0
        end = len(buf)
        while pos < end:
            if self.is_closing():
                return
            term = self.terminator
            if not term:
                # None or 0: everything is data.
                self.collect_incoming_data(buf[pos:] if pos else buf)
                return
            if isinstance(term, int):
                avail = end - pos
                if avail < term:
                    self.collect_incoming_data(buf[pos:] if pos else buf)
                    self.terminator = term - avail
                    return
                self.collect_incoming_data(buf[pos : pos + term])
                pos += term
                self.terminator = 0
                self.found_terminator()
                continue
            i = buf.find(term, pos)
            if i >= 0:
                if i > pos:
                    self.collect_incoming_data(buf[pos:i])
                pos = i + len(term)
                self.found_terminator()
                continue
            keep = _prefix_at_end(buf, term)
            cut = end - keep
            if cut > pos:
                self.collect_incoming_data(buf[pos:cut])
            self.ac_in_buffer = buf[cut:]
            return
