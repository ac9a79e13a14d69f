"""Functions the dask pool tests run on Dask workers (importable there by name)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

from anycore._workers._carry import current_worker_id

_initialized: list[str] = []


def square(x: int) -> int:
    return x * x


def add(a: int, b: int, *, c: int = 0) -> int:
    return a + b + c


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


def remember(tag: str) -> None:
    _initialized.append(f"{tag}:{current_worker_id()}")


def initialized() -> list[str]:
    return list(_initialized)


def where() -> tuple[int, str | None]:
    return os.getpid(), current_worker_id()


def size_of(data: bytes, extra: int = 0) -> int:
    return len(data) + extra


def log_warning(message: str) -> int:
    logging.getLogger("test.dask").warning(message)
    return os.getpid()


def _wait_for(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.01)
    return False


def block(started: str, release: str) -> str:
    """Say it started, then wait (at most 60 s) until *release* exists."""
    Path(started).write_text(str(os.getpid()))
    return "released" if _wait_for(Path(release), 60.0) else "timed out"


def killed_once(marker: str, release: str) -> str:
    """The first run writes its pid to *marker* and waits to be killed."""
    path = Path(marker)
    if path.exists():
        return f"retried after {path.read_text()} died"
    path.write_text(str(os.getpid()))
    return "not killed" if _wait_for(Path(release), 60.0) else "timed out"


def kill_my_worker() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x
