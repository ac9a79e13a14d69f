"""AsyncResource: the start / aclose lifecycle as an async context manager.

Servers, datagram endpoints and network log handlers all open with an
awaitable ``start()`` and close with an idempotent ``aclose()``; entering
``async with`` starts them and leaving closes them, whatever ended the block.
This base owns that protocol once (trio's ``AsyncResource`` idea).  Classes
whose entry or exit does more (a pool waiting for its work, a process that may
already be running) keep their own ``__aenter__`` / ``__aexit__``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["AsyncResource"]


class AsyncResource:
    """Base of resources opened by ``start()`` and closed by ``aclose()``."""

    __slots__ = ()

    async def start(self) -> None:
        """Open the resource."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the resource (idempotent; closes even if a graceful close fails)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
