"""Child-process bodies for tests/test_sharedmem.py (imported by the children)."""

from __future__ import annotations

import array
import os
from typing import Any

from anycore.errors import PeerClosed


def sum_arrays(chan: Any, n: int) -> list[float]:
    """Receive *n* float arrays, return their sums."""
    return [sum(chan.sync_recv_array(timeout=30)) for _ in range(n)]


def send_arrays(chan: Any, n: int, size: int) -> int:
    """Send *n* arrays of *size* floats (array i holds i everywhere), then close."""
    for i in range(n):
        chan.sync_send(array.array("d", [float(i)]) * size, timeout=30)
    chan.close()
    return n


def double_back(inbound: Any, outbound: Any) -> int:
    """Echo each inbound array doubled until the inbound channel ends."""
    count = 0
    while True:
        try:
            items = inbound.sync_recv(timeout=30)
        except PeerClosed:
            break
        outbound.sync_send(array.array(items.format, [2 * x for x in items]), timeout=30)
        count += 1
    outbound.close()
    return count


def count_until_eof(chan: Any) -> int:
    """Count messages until the channel ends."""
    count = 0
    while True:
        try:
            chan.sync_recv(timeout=30)
        except PeerClosed:
            return count
        count += 1


def increment(value: Any, times: int, ready: Any = None, go: Any = None) -> int:
    """Increment a SharedValue under its lock, with a yield inside the
    critical section so that, without the lock, other processes would run
    between the read and the write (and updates would be lost).

    With *ready* / *go*: say ready, then start together with the others.
    """
    if ready is not None:
        ready.release()
        go.sync_wait(30)
    for _ in range(times):
        with value.lock:
            seen = value.value
            os.sched_yield()
            value.value = seen + 1
    return times


def fill(arr: Any, start: int, stop: int, item: float) -> list[Any]:
    """Fill a slice of a shared array; return the whole array as seen here."""
    arr[start:stop] = [item] * (stop - start)
    result: list[Any] = arr[:]
    return result


def squares(raw: Any) -> None:
    """Write i*i into every item of a RawSharedArray."""
    for i in range(len(raw)):
        raw[i] = i * i


async def async_receive_sum(chan: Any, n: int) -> float:
    """The async API in a child (ChildProcess runs it under asyncio.run)."""
    total = 0.0
    for _ in range(n):
        total += sum((await chan.recv()).tolist())
    return total


def wait_event(event: Any, ready: Any, timeout: float) -> bool:
    """Say ready, then wait for a ProcessEvent."""
    ready.set()
    return bool(event.sync_wait(timeout))


def take_and_release(sem: Any, timeout: float) -> bool:
    """Take a ProcessSemaphore token (waiting), and give it back."""
    got = bool(sem.sync_acquire(timeout=timeout))
    if got:
        sem.release()
    return got


def send_tagged(chan: Any, tag: int, n: int) -> int:
    """Send n two-item int64 arrays [tag, i] (several senders share the channel)."""
    for i in range(n):
        chan.sync_send(array.array("q", [tag, i]), timeout=30)
    return n
