"""Which sinks the loop may write itself, and whether a pipe has room now.

Owns the classification the buffered handlers' engine (:mod:`._engine`) asks
about a sink's file descriptor: a regular file (or ``/dev/null``) may be
written from the loop at once; a pipe, socket or terminal only in pieces of
at most ``PIPE_BUF`` bytes after ``poll()`` says it has room (POSIX: such a
write does not block); anything else only from the writer thread.
"""

from __future__ import annotations

import os
import select
import stat
from typing import Literal

__all__ = ["PIPE_BUF", "Access", "fd_access", "writable"]

#: The most bytes a pipe takes in one write without blocking, once it polls writable.
PIPE_BUF: int = getattr(select, "PIPE_BUF", 512)

# How a sink may be written from the loop: "direct" (a regular file, an
# in-memory stream: a write does not wait for anyone), "polled" (a pipe,
# socket or terminal: only when it polls writable, in PIPE_BUF pieces) or
# "thread" (never: the writer thread does all the writing).
Access = Literal["direct", "polled", "thread"]


def fd_access(fd: int) -> Access:
    """How the loop may write the sink open on ``fd``."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return "thread"
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return "direct"
    if stat.S_ISCHR(mode):
        # A terminal may be paused; /dev/null and friends never block.
        return "polled" if os.isatty(fd) else "direct"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "polled"
    return "thread"


def writable(fd: int) -> bool:
    """Whether a pipe, socket or terminal has room for a write now."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    try:
        events = poller.poll(0)
    except OSError:
        return False
    return any(ev & select.POLLOUT for _, ev in events)
