"""An in-memory connection: unit-test a Handler without sockets.

What Twisted's ``StringTransport`` gives its protocols, for anycore handlers:
:func:`memory_connection` runs a handler on the real portable driver (the code
that serves it under trio, framing, batching and back-pressure included) over
a pair of in-memory byte streams, and hands the test the other end, a
:class:`MemoryPeer`: feed bytes, read what the handler sent, half-close,
reset, and act as a slow reader to see flow control at the high-water mark.
It works on asyncio, uvloop and trio, under any test runner.

The handler's input is buffered without bound (the test decides how much it
feeds).  What the handler sends lands in :attr:`MemoryPeer.received` at once,
until :meth:`MemoryPeer.pause_reading` is called: then the handler's sends
wait, its unsent output grows, passes ``write_high_water`` (its
``statistics().writing_paused`` turns true, ``drain()`` waits, reading stops)
and drains again after :meth:`MemoryPeer.resume_reading`.  Nothing runs in the
background on the peer's side, so no byte is ever in between.

Rejected: a fake ``asyncio.Transport`` under the fast-path driver (asyncio
only, and bound to that driver's private constructor).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._net._anyio_driver import run_handler
from .._net._handler import Handler
from ..errors import ClosedError

__all__ = ["MemoryPeer", "memory_connection"]

H = TypeVar("H", bound=Handler)

#: The address the handler sees as its peer (``handler.peer``).
PEER_ADDRESS = ("memory", 0)
LOCAL_ADDRESS = ("memory", 1)


class _HandlerSide(anyio.abc.ByteStream):
    """The handler's end: reads what the peer sent, writes to the peer."""

    def __init__(self, incoming: MemoryObjectReceiveStream[bytes], peer: MemoryPeer[Any]) -> None:
        self._incoming = incoming
        self._peer = peer
        self._leftover = b""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._leftover:
            try:
                self._leftover = await self._incoming.receive()
            except anyio.EndOfStream:
                if self._peer.was_reset:
                    raise anyio.BrokenResourceError from ConnectionResetError(
                        "the memory peer reset the connection"
                    )
                raise
        data, self._leftover = self._leftover[:max_bytes], self._leftover[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        peer = self._peer
        await anyio.lowlevel.checkpoint()
        while True:
            if peer.was_reset:
                raise anyio.BrokenResourceError from ConnectionResetError(
                    "the memory peer reset the connection"
                )
            if peer._handler_eof:
                raise anyio.ClosedResourceError
            if peer._reading.is_set():
                break
            await peer._reading.wait()  # a slow reader: the handler's output waits
        peer._deliver(bytes(item))

    async def send_eof(self) -> None:
        self._peer._end_of_output()

    async def aclose(self) -> None:
        self._peer._end_of_output()
        await self._incoming.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Any]:
        return {
            anyio.abc.SocketAttribute.remote_address: lambda: PEER_ADDRESS,
            anyio.abc.SocketAttribute.local_address: lambda: LOCAL_ADDRESS,
        }


class MemoryPeer(Generic[H]):
    """The far end of a :func:`memory_connection`: what a client would be.

    Attributes:
        handler: the handler under test.
    """

    def __init__(self, handler: H, to_handler: MemoryObjectSendStream[bytes]) -> None:
        self.handler = handler
        self._to_handler = to_handler
        self._received = bytearray()
        self._arrived = anyio.Event()  # set (and replaced) whenever output arrives
        self._reading = anyio.Event()  # set while the peer reads
        self._reading.set()
        self._handler_eof = False
        self._finished = anyio.Event()
        self.was_reset = False

    # -- feeding the handler -------------------------------------------------------

    def send_nowait(self, data: bytes) -> None:
        """Feed ``data`` to the handler (its next read returns it).

        Raises:
            ClosedError: this side was closed (:meth:`send_eof`, :meth:`reset`).
        """
        try:
            self._to_handler.send_nowait(bytes(data))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ClosedError("the memory peer's sending side is closed") from None

    async def send(self, data: bytes) -> None:
        """Feed ``data`` to the handler and let it run until every task waits."""
        self.send_nowait(data)
        await self.settle()

    async def send_eof(self) -> None:
        """Half-close: the handler reads end of stream after what was sent."""
        await self._to_handler.aclose()
        await self.settle()

    async def reset(self) -> None:
        """Reset the connection: the handler's ``connection_lost`` gets an error."""
        self.was_reset = True
        await self._to_handler.aclose()
        self._reading.set()  # a send waiting for us now fails
        await self.settle()

    @staticmethod
    async def settle() -> None:
        """Wait until every task is blocked: the handler did what it can."""
        await anyio.wait_all_tasks_blocked()

    # -- what the handler sent -------------------------------------------------------

    @property
    def received(self) -> bytes:
        """Everything the handler sent that was not taken yet."""
        return bytes(self._received)

    def take(self) -> bytes:
        """Return :attr:`received` and forget it."""
        data = bytes(self._received)
        self._received.clear()
        return data

    async def receive_until(self, marker: bytes, *, timeout: float = 5.0) -> bytes:
        """Wait until the handler's output holds ``marker``; take it and what precedes.

        Raises:
            TimeoutError: ``marker`` did not come within ``timeout`` seconds.
            ClosedError: the handler closed first.
        """
        with anyio.fail_after(timeout):
            while (end := self._received.find(marker)) < 0:
                if self._handler_eof:
                    raise ClosedError(
                        f"the handler closed without sending {marker!r}; "
                        f"it sent {bytes(self._received)!r}"
                    )
                await self._arrived.wait()
        end += len(marker)
        data = bytes(self._received[:end])
        del self._received[:end]
        return data

    async def receive_all(self, *, timeout: float = 5.0) -> bytes:
        """Wait until the handler closed its side; take everything it sent."""
        with anyio.fail_after(timeout):
            while not self._handler_eof:
                await self._arrived.wait()
        return self.take()

    @property
    def handler_closed(self) -> bool:
        """Whether the handler closed its side (end of its output reached)."""
        return self._handler_eof

    async def wait_closed(self, *, timeout: float = 5.0) -> None:
        """Wait until the connection is over: ``connection_lost`` has run."""
        with anyio.fail_after(timeout):
            await self._finished.wait()

    # -- flow control ----------------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading the handler's output (a slow client): it backs up."""
        self._reading = anyio.Event()

    def resume_reading(self) -> None:
        """Read the handler's output again: its buffer drains."""
        self._reading.set()

    # -- running -----------------------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        self._received += data
        arrived, self._arrived = self._arrived, anyio.Event()
        arrived.set()

    def _end_of_output(self) -> None:
        self._handler_eof = True
        self._arrived.set()

    async def _run(self, stream: _HandlerSide, write_buffer_limit: int | None) -> None:
        try:
            await run_handler(self.handler, stream, write_buffer_limit=write_buffer_limit)
        finally:
            self._finished.set()


@contextlib.asynccontextmanager
async def memory_connection(
    handler: H,
    *,
    write_buffer_limit: int | None = None,
    close_timeout: float = 5.0,
) -> AsyncIterator[MemoryPeer[H]]:
    """Connect ``handler`` to an in-memory peer for the body of the block.

    Example::

        async with memory_connection(Echo()) as peer:
            await peer.send(b"hello\\r\\n")
            assert await peer.receive_until(b"\\r\\n") == b"hello\\r\\n"

    When the block ends, the peer closes its side and waits (at most
    ``close_timeout`` seconds) for the connection to end, so that
    ``connection_lost`` has run; then anything still running is cancelled.

    Args:
        handler: a fresh handler instance.
        write_buffer_limit: abort when the handler's unsent bytes exceed it.
        close_timeout: how long the end of the block waits for the handler.
    """
    to_handler, handler_in = anyio.create_memory_object_stream[bytes](math.inf)
    peer = MemoryPeer(handler, to_handler)
    stream = _HandlerSide(handler_in, peer)
    async with anyio.create_task_group() as tg:
        tg.start_soon(peer._run, stream, write_buffer_limit)
        await peer.settle()  # connection_made has run
        try:
            yield peer
        finally:
            peer.resume_reading()
            await to_handler.aclose()
            with anyio.move_on_after(close_timeout, shield=True):
                await peer._finished.wait()
            tg.cancel_scope.cancel()
