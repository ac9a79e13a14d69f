# Design: which async library is running us.
#
# Servers, clients and datagram endpoints pick a driver by backend: the fast
# asyncio.Protocol path when an asyncio loop (stdlib or uvloop) runs the caller,
# the portable anyio path otherwise (trio).  This module owns that one question.
#
# Rejected: the library-sniffing package that trio depends on.  anyio no longer
# depends on it and anycore's runtime dependencies are uvloop, anyio and
# structlog only; it is present in dev only because trio pulls it in.
# Rejected: anyio's private ``get_async_backend``.
#
# Trio is asked first: in trio's guest mode an asyncio loop is also running in
# the thread, but the caller is a trio task and needs the portable path.

from __future__ import annotations

import asyncio
import sys
from typing import Literal

__all__ = ["current_backend", "running_on_asyncio"]

Backend = Literal["asyncio", "trio"]


def current_backend() -> Backend:
    """Name the async library running the current task.

    Returns:
        ``"trio"`` inside a trio task (guest mode included), ``"asyncio"``
        inside an asyncio task (the stdlib loop or uvloop).

    Raises:
        RuntimeError: called outside any running event loop.
    """
    trio = sys.modules.get("trio")  # never imported here: trio is optional
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    asyncio.get_running_loop()  # raises RuntimeError outside a loop
    return "asyncio"


def running_on_asyncio() -> bool:
    """Whether the fast asyncio.Protocol path can serve the caller.

    Returns:
        True inside an asyncio task, False inside a trio task.

    Raises:
        RuntimeError: called outside any running event loop.
    """
    return current_backend() == "asyncio"
