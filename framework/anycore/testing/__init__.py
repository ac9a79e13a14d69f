"""anycore's public test kit: helpers for testing code built on anycore.

* :func:`memory_connection` -- a handler on an in-memory connection, driven
  by a :class:`MemoryPeer` (feed bytes, read replies, close, flow control).
* :func:`capture_logs` -- records (stdlib and structlog) as dicts with context.
* :class:`FakeClock` -- virtual time for asyncio loops (autojump or manual).
* :func:`check_framer` -- a conformance check for framers, including your own.
* ``anycore.testing.pytest_plugin`` -- fixtures (loaded by pytest itself).
"""

from __future__ import annotations

from ._clock import FakeClock as FakeClock
from ._framers import check_framer as check_framer
from ._logs import LogCapture as LogCapture, capture_logs as capture_logs
from ._memory import MemoryPeer as MemoryPeer, memory_connection as memory_connection

__all__ = [
    "FakeClock",
    "LogCapture",
    "MemoryPeer",
    "capture_logs",
    "check_framer",
    "memory_connection",
]
