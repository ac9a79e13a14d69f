"""anycore's public test kit: helpers for testing code built on anycore.

* :class:`FakeClock` -- virtual time for asyncio loops (autojump or manual).
* :func:`check_framer` -- a conformance check for framers, including your own.
"""

from __future__ import annotations

from ._clock import FakeClock as FakeClock
from ._framers import check_framer as check_framer

__all__ = ["FakeClock", "check_framer"]
