# Design: the server's per-connection guard - frame deadlines and receive rate.
#
# This module owns ``GuardPolicy`` (what ``serve(frame_deadline=...,
# min_receive_rate=..., on_limit="shed")`` asks for) and ``_Guard``, the
# per-connection state the server's sweep looks at.  Slowloris peers are
# caught by looking, once per guard period, at what the driver already counts
# (bytes and frames in, reads, whether the framer holds a partial frame):
# nothing runs per read, and one timer per server drives every connection's
# guard.  The same bookkeeping tells since when a connection has been quiet
# or slow, which is what shedding at ``max_connections`` ranks by.
#
# The guard reads its connection through ``_Guarded`` (the asyncio driver
# implements it), so this module imports no driver.  The portable driver has
# no guard: frame deadlines and shedding are asyncio-engine features.
#
# Rejected: a timer per connection (10x the CPU at 8,000 idle connections).

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from ._framing import Framer

__all__ = ["GuardPolicy"]


class _Guarded(Protocol):
    """What the guard reads of its connection (``_ProtocolDriver``)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def framer(self) -> Framer: ...

    @property
    def reads(self) -> int: ...

    @property
    def frames_in(self) -> int: ...

    @property
    def bytes_in(self) -> int: ...

    @property
    def _closing(self) -> bool: ...

    @property
    def _reading_paused(self) -> bool: ...

    @property
    def _task(self) -> asyncio.Task[None] | None: ...

    @property
    def _waiter(self) -> asyncio.Future[None] | None: ...

    @property
    def _out(self) -> list[bytes]: ...

    def _cut_slow(self, why: str) -> None: ...


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """What the server's per-connection guard enforces (see ``serve()``).

    Attributes:
        frame_deadline: seconds one frame may take from its first byte.
        min_receive_rate: bytes/s a frame in progress must arrive at, measured
            over ``rate_window``.
        rate_window: seconds over which the receive rate is measured.
        period: seconds between checks.
    """

    frame_deadline: float | None = None
    min_receive_rate: float | None = None
    rate_window: float = 5.0
    period: float = 1.0

    @classmethod
    def build(
        cls,
        frame_deadline: float | None,
        min_receive_rate: float | None,
        rate_window: float,
    ) -> GuardPolicy:
        steps = [1.0, rate_window / 4]
        if frame_deadline is not None:
            steps.append(frame_deadline / 4)
        return cls(frame_deadline, min_receive_rate, rate_window, max(0.01, min(steps)))


class _Guard:
    """Per-connection slowloris guard, checked by the server's sweep every
    ``policy.period`` (one timer per server, nothing per read): it looks at
    the framer and the counters.

    A frame is in progress while the framer holds a partial frame and reading
    is not paused by us.  It must complete within ``frame_deadline`` and, per
    ``rate_window``, arrive at ``min_receive_rate``.  The guard also tracks
    since when the connection has been quiet (no read), for shedding.
    """

    __slots__ = (
        "_conn",
        "_frames",
        "_partial_since",
        "_policy",
        "_quiet_since",
        "_rate_bytes",
        "_rate_since",
        "_reads",
    )

    def __init__(self, conn: _Guarded, policy: GuardPolicy) -> None:
        self._conn = conn
        self._policy = policy
        self._reads = 0
        self._quiet_since = 0.0
        self._partial_since: float | None = None
        self._frames = 0
        self._rate_since = 0.0
        self._rate_bytes = 0

    def start(self) -> None:
        self._quiet_since = self._conn.loop.time()

    def _in_frame(self) -> bool:
        conn = self._conn
        if conn._reading_paused or conn._closing:
            return False
        task = conn._task
        if task is not None and not task.done() and conn._waiter is None:
            return False  # an async handler is busy: the peer is waiting on us
        return conn.framer.buffered > 0

    def quiet_or_slow_since(self, now: float) -> float | None:
        if self._partial_since is not None and self._in_frame():
            return self._partial_since
        conn = self._conn
        task = conn._task
        if (task is not None and not task.done() and conn._waiter is None) or conn._out:
            return None
        if conn.reads != self._reads:
            return None  # read since the last check: not quiet
        return self._quiet_since

    def check(self, now: float) -> None:
        """One look (the server's sweep): cut a frame over its deadline or
        below the receive rate; note since when the connection is quiet."""
        conn = self._conn
        if conn._closing:
            return
        policy = self._policy
        if conn.reads != self._reads:
            self._reads = conn.reads
            self._quiet_since = now
        if self._in_frame():
            if self._partial_since is None or conn.frames_in != self._frames:
                # A frame began (or the previous one completed and another began).
                self._partial_since = self._rate_since = now
                self._frames = conn.frames_in
                self._rate_bytes = conn.bytes_in
            else:
                elapsed = now - self._partial_since
                deadline = policy.frame_deadline
                if deadline is not None and elapsed >= deadline:
                    conn._cut_slow(f"one frame took more than {deadline:g} s (frame_deadline)")
                    return
                rate = policy.min_receive_rate
                window = now - self._rate_since
                if rate is not None and window >= policy.rate_window:
                    got = (conn.bytes_in - self._rate_bytes) / window
                    if got < rate:
                        conn._cut_slow(
                            f"receiving {got:.0f} B/s inside a frame, below "
                            f"min_receive_rate={rate:g}"
                        )
                        return
                    self._rate_since = now
                    self._rate_bytes = conn.bytes_in
        else:
            self._partial_since = None
