"""Exponential backoff with jitter: the one formula anycore retries with.

Retry number *n* (1-based) waits ``initial * 2**(n - 1)`` seconds, capped at
``maximum``, times a random factor in ``1 +- jitter``.  The cap comes before
the jitter, so delays at the cap still spread out: peers that failed together
(the clients of a restarted server, programs crashing on one bad config) do
not retry in lock-step.  ``jitter=0`` is plain doubling, for a retry only one
party makes (a listener's ``accept()`` out of file descriptors).

Connection retries (``connect``), the network log handlers' reconnects, the
supervisor's restarts, the mail handler's resends and both accept loops use it.
"""

from __future__ import annotations

import random

__all__ = ["Backoff", "backoff_delay"]


def backoff_delay(attempt: int, initial: float, maximum: float, jitter: float = 0.25) -> float:
    """The delay before retry number ``attempt`` (1-based), in seconds."""
    exponent = min(max(attempt - 1, 0), 64)  # 2**64 * any initial is past any cap
    base = min(maximum, initial * 2.0**exponent)
    if jitter:
        base *= 1.0 + random.uniform(-jitter, jitter)
    return base


class Backoff:
    """The delays of one retry loop: :meth:`next` after each failure, :meth:`reset`
    after a success.

    Args:
        initial: the first delay, in seconds.
        maximum: the longest delay (before jitter).
        jitter: the random factor's half-width (0.25: each delay is 75-125% of
            the doubled one).
    """

    __slots__ = ("attempt", "initial", "jitter", "last", "maximum")

    def __init__(self, initial: float, maximum: float, jitter: float = 0.25) -> None:
        if initial < 0 or maximum < 0:
            raise ValueError("backoff delays must be >= 0")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.attempt = 0
        self.last = 0.0  # the delay next() returned last (0: no failure yet)

    def next(self) -> float:
        """Count one more failure and return the delay to wait before retrying."""
        self.attempt += 1
        self.last = backoff_delay(self.attempt, self.initial, self.maximum, self.jitter)
        return self.last

    def reset(self) -> None:
        """A success: the next failure starts again from ``initial``."""
        self.attempt = 0
        self.last = 0.0

    def __repr__(self) -> str:
        return (
            f"Backoff(initial={self.initial:g}, maximum={self.maximum:g}, "
            f"jitter={self.jitter:g}, attempt={self.attempt})"
        )
