# The notify socket: learning that a supervised program is ready (systemd's protocol).
#
# What this module owns: ``NotifySocket``, the receiving end of ``sd_notify``.  Each
# start of an instance that wants it gets a fresh datagram socket in the abstract
# namespace; its address goes to the child as NOTIFY_SOCKET, and the first datagram
# holding a ``READY=1`` line resolves ``ready``.  ``anycore run`` (``_systemd.sd_notify``)
# speaks it, so a server behaves the same under ``anycore supervise`` and systemd.
#
# Design choices:
#   * The abstract namespace (Linux): nothing to unlink, nothing another user can
#     squat on the file system, gone with the socket.  The name holds our pid, the
#     object's id and the instance's name, so restarts never share one.
#   * Read on the loop with ``add_reader``, at most 16 datagrams per wakeup, 4 KiB
#     each: a chatty program cannot hold the loop.  Other states (STATUS=, WATCHDOG=)
#     are read and ignored.
#   * One socket per process start, closed when the process ends: a READY=1 from a
#     previous run (or its leftover children) cannot mark a new one ready.
from __future__ import annotations

import asyncio
import os
import socket

__all__ = ["NotifySocket"]


class NotifySocket:
    """A datagram socket receiving systemd-style notifications (READY=1)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._loop = loop
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Abstract namespace: nothing to unlink, gone with the socket.
        self.address = f"@anycore-{os.getpid()}-{id(self):x}-{name}"
        try:
            self.sock.bind("\0" + self.address[1:])
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        for _ in range(16):
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if b"READY=1" in data.split(b"\n") and not self.ready.done():
                self.ready.set_result(None)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
        if not self.ready.done():
            self.ready.cancel()
