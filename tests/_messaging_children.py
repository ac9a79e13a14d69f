"""Child-process bodies and shared classes for test_connection.py / test_managers.py.

Importable by forkserver / spawn children (the tests put this directory on
sys.path).
"""

from __future__ import annotations

import os
from multiprocessing import connection as mpc
from pathlib import Path
from typing import Any

from anycore._messaging._connection import Connection
from anycore._messaging._managers import AsyncProxy, BaseManager, SyncManager


async def echo_until_eof(conn: Connection) -> int:
    """Echo objects back until the parent closes its end; return how many."""
    n = 0
    async with conn:
        while True:
            try:
                obj = await conn.recv()
            except EOFError:
                return n
            await conn.send(obj)
            n += 1


def stdlib_echo_bytes(conn: Connection) -> None:
    """Take over the fd with the standard library's blocking Connection and echo bytes."""
    fd = conn.detach()
    os.set_blocking(fd, True)
    c = mpc.Connection(fd)
    try:
        while True:
            try:
                data = c.recv_bytes()
            except EOFError:
                return
            c.send_bytes(data[::-1])
    finally:
        c.close()


class Marker:
    """Unpickling it writes a file: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


# -- managers ----------------------------------------------------------------------


async def add_under_lock(d: Any, lock: Any, rounds: int) -> None:
    """A read-modify-write of d['count'] under the manager lock, *rounds* times."""
    async with d:  # closes the connections the unpickled proxy opened
        try:
            for _ in range(rounds):
                async with lock:  # a LockProxy's `async with` holds the lock
                    value = await d.get("count")
                    await d.setitem("count", value + 1)
        finally:
            await lock.aclose()


async def wait_then_write(ev: Any, d: Any) -> None:
    """A watcher process: wait for the event, then read and write the dict."""
    async with ev, d:
        assert await ev.wait(30)
        assert await d.getitem("ready") is True
        await d.setitem("seen", True)


async def hold_lock_forever(lock: Any, holding: Any) -> None:
    """Take the lock, say so, and never let go (the parent kills this process)."""
    import anyio

    async with holding:
        assert await lock.acquire()
        await holding.set()
        await anyio.sleep_forever()


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def incr(self, by: int = 1) -> int:
        self.value += by
        return self.value

    def get(self) -> int:
        return self.value

    def reset(self) -> None:  # public but not exposed through CounterManager
        self.value = 0

    def spawn(self) -> Counter:  # returns a shared Counter (method_to_typeid)
        return Counter(self.value * 10)

    async def slow_incr(self, event: Any) -> int:
        return self.incr()

    def unpicklable(self) -> Any:
        import threading

        return threading.Lock()


class CounterManager(BaseManager):
    pass


CounterManager.register(
    "Counter",
    Counter,
    exposed=("incr", "get", "spawn", "slow_incr", "unpicklable"),
    method_to_typeid={"spawn": "Counter"},
)


class CounterProxy(AsyncProxy):
    """A custom proxy type: its own methods on top of the exposed ones."""

    _exposed_ = ("incr", "get")

    async def double(self) -> int:
        value: int = await self._callmethod("get")
        return int(await self._callmethod("incr", (value,)))


CounterManager.register("FancyCounter", Counter, proxytype=CounterProxy)

_BOARD: dict[str, Any] = {}


def get_board() -> dict[str, Any]:
    """The server's one shared board (a typeid that returns an existing object)."""
    return _BOARD


class BoardManager(SyncManager):
    pass


BoardManager.register("board", get_board, exposed=("__getitem__", "__setitem__", "get", "keys"))


async def write_board_remotely(address: Any, authkey: bytes, key: str, value: Any) -> None:
    """A separate process joins the manager by address and authkey."""
    async with await BoardManager(address, authkey).connect() as m:
        board = await m.board()  # type: ignore[attr-defined]
        await board.setitem(key, value)
