"""Helpers the test modules share: bounded waits and what /proc says about a process.

Every wait here is bounded (a timeout that fails the test) and polls only
what cannot be awaited: another process's state, a file another process
writes, a condition set by a thread.  ``settle`` involves no time at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anyio

__all__ = ["alive", "io_field", "settle", "wait_for_text", "wait_until", "wchan"]


async def settle(rounds: int = 10) -> None:
    """Let every ready callback and task run a few rounds (no timing involved)."""
    for _ in range(rounds):
        await anyio.sleep(0)


async def wait_until(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.002
) -> None:
    """Poll ``condition()`` until it is true; fail after ``timeout`` seconds.

    For state set by a thread, another process or the kernel (a socket, /proc),
    which gives nothing to await.
    """
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(interval)


def wait_for_text(path: Path, needle: str, timeout: float = 30) -> str:
    """The file's text once it contains ``needle`` (another process writes it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace")
        if needle in text:
            return text
        time.sleep(0.02)  # polling a file another process writes, bounded
    raise AssertionError(f"{needle!r} never written; got:\n{path.read_text()}")


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def wchan(pid: int) -> str:
    """The kernel function ``pid`` sleeps in ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def io_field(pid: int, name: str) -> int:
    """One counter of /proc/PID/io (``rchar``, ``syscr``, ...)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return int(value)
    raise KeyError(name)
