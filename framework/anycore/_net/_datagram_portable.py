# Design: the portable datagram driver - DatagramHandler over anyio UDP sockets.
#
# ``_PortableGlue`` runs the handler of ``_datagram`` on any anyio backend (trio,
# or asyncio with ``portable=True``): a task receives, calls the handler
# (awaiting it when async), then receives again, so order and backpressure come
# from not receiving.  ``sendto`` writes to the non-blocking stdlib socket anyio
# wrapped, so it stays synchronous; a full kernel buffer counts as a drop.
# Rejected: a memory object stream between receiver and handler (a hop per
# datagram and a second buffer to bound).  The asyncio fast path (``_Glue``)
# lives in ``_datagram``; servers and clients pick one by backend.

from __future__ import annotations

import logging
import socket
from typing import Any, cast

import anyio
import anyio.abc

from ._datagram import Address, DatagramDriver, DatagramHandler, _address, _sockaddr

log = logging.getLogger("anycore.datagram")


class _PortableGlue(DatagramDriver):
    """Runs a DatagramHandler over an anyio UDP socket, on any anyio backend (trio).

    The receive loop is a task: each datagram is handled before the next is
    received, so an async handler keeps order and applies backpressure by not
    receiving (the kernel's buffer then drops the excess, as UDP does).
    ``sendto`` stays synchronous: it writes to the non-blocking socket and
    counts a datagram the kernel has no room for as dropped.
    """

    def __init__(
        self, handler: DatagramHandler, sock: Any, raw: socket.socket, *, connected: bool
    ) -> None:
        self.handler = handler
        handler._glue = self
        self.sock = sock
        # The stdlib socket anyio wrapped (same fd, non-blocking): sendto stays sync.
        self.raw = raw
        self.connected = connected
        self.sockname: Address | None = _address(self.raw.getsockname())
        self.peer: Address | None = _address(self.raw.getpeername()) if connected else None
        self.closing = False
        self.closed = False
        self.paused_writing = False
        self._outer = anyio.CancelScope()
        self._receiving: anyio.CancelScope | None = None
        self.lost = anyio.Event()
        self._start_counters()

    def send(self, data: bytes | bytearray | memoryview, addr: Address | None, size: int) -> None:
        try:
            if addr is None:
                self.raw.send(data)
            else:
                self.raw.sendto(data, _sockaddr(addr))
        except BlockingIOError:
            self.dropped_write_buffer += 1
            return
        except OSError as exc:
            self.report_os_error(exc)
            return
        self.datagrams_sent += 1
        self.bytes_sent += size

    async def wait_writable(self) -> None:
        return  # never paused: a full kernel buffer drops instead

    def close(self) -> None:
        """Stop after the datagram being handled (if any)."""
        self.closing = True
        if self._receiving is not None:
            self._receiving.cancel()

    def abort(self) -> None:
        self.closing = True
        self._outer.cancel()

    async def wait_lost(self) -> None:
        await self.lost.wait()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        handler = self.handler
        limit = handler.max_datagram_size
        exc: BaseException | None = None
        try:
            with self._outer:
                result = handler.connection_made()
                task_status.started()
                if result is not None:
                    await result
                while not self.closing:
                    with anyio.CancelScope() as receiving:
                        self._receiving = receiving
                        try:
                            item = await self.sock.receive()
                        except (anyio.ClosedResourceError, anyio.EndOfStream):
                            break
                        except anyio.BrokenResourceError as broken:
                            if isinstance(broken.__cause__, OSError):
                                self.report_os_error(broken.__cause__)
                                continue
                            exc = broken
                            break
                        except OSError as os_error:
                            self.report_os_error(os_error)
                            continue
                        finally:
                            self._receiving = None
                    if receiving.cancelled_caught:
                        break
                    data: bytes
                    addr: Address
                    if self.connected:
                        data, addr = item, cast(Address, self.peer)
                    else:
                        data, addr = item
                        if self.raw.family == socket.AF_UNIX:
                            addr = (addr,)
                    size = len(data)
                    if size > limit:
                        self.dropped_too_large += 1
                        try:
                            handler.datagram_too_large(size, addr)
                        except Exception:
                            self.handler_errors += 1
                            log.exception("datagram_too_large hook of %r failed", handler)
                        continue
                    self.datagrams_received += 1
                    self.bytes_received += size
                    try:
                        result = handler.datagram_received(data, addr)
                        if result is not None:
                            await result
                    except Exception:
                        self.handler_errors += 1
                        log.exception("datagram_received of %r failed", handler)
        finally:
            self.closing = True
            self.closed = True
            with anyio.CancelScope(shield=True):
                await self.sock.aclose()
                try:
                    with anyio.move_on_after(_LOST_TIMEOUT):
                        result = handler.connection_lost(exc)
                        if result is not None:
                            await result
                except Exception:
                    self.handler_errors += 1
                    log.exception("connection_lost of %r failed", handler)
                self.lost.set()


# An async connection_lost on the portable path gets this long (it runs shielded).
_LOST_TIMEOUT = 5.0


async def _close_portable(glues: list[_PortableGlue], drain_timeout: float | None) -> None:
    """Stop receiving, let the datagram being handled finish (bounded), close."""
    for g in glues:
        g.close()
    try:
        with anyio.move_on_after(drain_timeout):
            for g in glues:
                await g.wait_lost()
    finally:
        # Past the deadline, or cancelled: end every socket now.
        for g in glues:
            g.abort()
        with anyio.CancelScope(shield=True):
            for g in glues:
                await g.wait_lost()
