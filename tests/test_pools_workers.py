"""Functions the pool and child-process tests run in other processes.

Kept apart from the test modules so a worker imports only this small module
(by reference, as pickle sends functions) instead of pytest and the tests.
It holds no tests.
"""

from __future__ import annotations

import ctypes
import os
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from anycore._core._state import register_exit_flush
from anycore._workers._carry import carry_context_var, current_worker_id

REQUEST_ID: ContextVar[str] = carry_context_var(ContextVar("tests.request_id", default="-"))
NOT_CARRIED: ContextVar[str] = ContextVar("tests.not_carried", default="-")

_initialized: list[Any] = []


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def pid_of(_x: object = None) -> int:
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("this exception does not pickle")


def fail_unpicklable() -> None:
    raise Unpicklable("cannot travel")


def exit_now(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def announce_and_sleep(path: str, seconds: float = 60.0) -> None:
    """Write our pid to *path* (atomically), then sleep."""
    tmp = f"{path}.tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(seconds)


def init_worker(value: str) -> None:
    _initialized.append(value)


def read_init(_x: object = None) -> list[Any]:
    return list(_initialized)


def init_fails() -> None:
    raise RuntimeError("initializer refuses")


def context_values(_x: object = None) -> dict[str, Any]:
    try:
        from structlog.contextvars import get_contextvars

        bound = get_contextvars()
    except ImportError:  # pragma: no cover
        bound = {}
    return {
        "request_id": REQUEST_ID.get(),
        "not_carried": NOT_CARRIED.get(),
        "structlog": bound,
        "worker_id": current_worker_id(),
    }


def flush_to(path: str) -> None:
    """Register an exit-flush hook that writes *path*."""
    register_exit_flush(lambda: Path(path).write_text("flushed"))


def flush_then_return(path: str, value: int) -> int:
    flush_to(path)
    return value


def flush_then_raise(path: str) -> None:
    flush_to(path)
    raise KeyError("after registering")


def flush_then_sleep(path: str, ready: str) -> None:
    flush_to(path)
    announce_and_sleep(ready)


async def async_double(x: int) -> int:
    import asyncio

    await asyncio.sleep(0)
    return 2 * x


def exit_with(code: int) -> None:
    raise SystemExit(code)


def log_from_worker(message: str) -> int:
    import logging
    import os

    logging.getLogger("test.children").warning(message)
    return os.getpid()
