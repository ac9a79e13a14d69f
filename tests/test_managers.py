"""Tests for anycore's managers: a server of shared objects and async proxies.

Servers run in a child process and in the test's own loop; clients include
other processes (ChildProcess) that get proxies pickled or join by address.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from anycore import ChildProcess
from anycore._messaging._connection import Client
from anycore._messaging._managers import AsyncProxy, SyncManager, Token, _ClientPool
from anycore._workers._child import iter_descendants
from anycore.errors import (
    AuthenticationError,
    ManagerError,
    MethodNotExposed,
    QueueEmpty,
    QueueFull,
    RuntimeStateError,
)

sys.path.insert(0, str(Path(__file__).parent))
import _messaging_children as children

KEY = b"manager-key"


@pytest.fixture(params=[True, False], ids=["child-server", "in-loop-server"])
async def manager(request: pytest.FixtureRequest) -> AsyncIterator[SyncManager]:
    async with SyncManager(authkey=KEY, process=request.param) as m:
        yield m


async def test_sync_manager_types(manager: SyncManager) -> None:
    d = await manager.dict(a=1)
    await d.setitem("b", 2)
    assert await d.getitem("a") == 1
    assert await d.len() == 2
    assert await d.contains("b")
    assert sorted(await d.items()) == [("a", 1), ("b", 2)]
    assert await d.get("zz", "default") == "default"
    with pytest.raises(KeyError) as info:
        await d.getitem("zz")
    assert "raised in the manager" in str(info.value.__cause__)

    lst = await manager.list([3, 1])
    await lst.append(2)
    await lst.sort()
    assert await lst.copy() == [1, 2, 3]
    assert await lst.getitem(0) == 1

    ns = await manager.Namespace(x=1)
    await ns.set("y", 2)
    assert (await ns.get("x"), await ns.todict()) == (1, {"x": 1, "y": 2})
    with pytest.raises(AttributeError):
        await ns.get("nope")

    q = await manager.Queue(2)
    await q.put("a")
    await q.put_nowait("b")
    with pytest.raises(QueueFull):  # also a queue.Full
        await q.put("c", timeout=0.05)
    assert [await q.get(), await q.get_nowait()] == ["a", "b"]
    with pytest.raises(queue.Empty):
        await q.get(block=False)
    with pytest.raises(QueueEmpty):  # also a queue.Empty, as above
        await q.get(timeout=0.01)
    await q.task_done()
    await q.task_done()
    await q.join()  # both items done
    with pytest.raises(ValueError, match="too many"):
        await q.task_done()

    ev = await manager.Event()
    assert not await ev.wait(0.01)
    await ev.set()
    assert await ev.is_set()
    assert await ev.wait()

    v = await manager.Value("i", 7)
    await v.set(8)
    assert await v.get() == 8

    arr = await manager.Array("d", [1.0, 2.0])
    await arr.setitem(1, 5.0)
    assert (await arr.len(), await arr.tolist()) == (2, [1.0, 5.0])

    lock = await manager.Lock()
    async with lock:
        assert await lock.locked()
        assert not await lock.acquire(timeout=0.01)  # another connection: it waits
    assert not await lock.locked()


async def test_queue_get_waits_for_a_put_from_another_task(manager: SyncManager) -> None:
    q = await manager.Queue()
    got: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def consumer() -> None:
            got.append(await q.get())

        tg.start_soon(consumer)
        await anyio.wait_all_tasks_blocked()
        await q.put("item")  # a second connection: the waiting get does not block it
    assert got == ["item"]


async def test_event_waited_on_by_a_child_process(manager: SyncManager) -> None:
    ev = await manager.Event()
    d = await manager.dict()
    async with ChildProcess(children.wait_then_write, ev, d, daemon=False) as child:
        await d.setitem("ready", True)
        await ev.set()
        await child.result(timeout=30)
    assert await d.getitem("seen") is True


async def test_four_processes_update_a_dict_under_a_manager_lock(manager: SyncManager) -> None:
    d = await manager.dict(count=0)
    lock = await manager.Lock()
    rounds = 40
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(_run_child, children.add_under_lock, d, lock, rounds)
    assert await d.getitem("count") == 4 * rounds  # no update lost


async def _run_child(fn: Any, *args: Any) -> None:
    async with ChildProcess(fn, *args, daemon=False) as child:
        await child.result(timeout=60)


async def test_without_the_lock_updates_race(manager: SyncManager) -> None:
    # The control for the test above: the same read-modify-write without the
    # lock loses updates, so the locked run is not passing by luck.
    d = await manager.dict(count=0)
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(race_without_lock, d)
    assert await d.getitem("count") < 4 * 50


async def race_without_lock(d: Any) -> None:
    for _ in range(50):
        value = await d.get("count")
        await anyio.lowlevel.checkpoint()
        await d.setitem("count", value + 1)


async def test_a_cancelled_acquire_does_not_take_the_lock_later(manager: SyncManager) -> None:
    lock = await manager.Lock()
    assert await lock.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lock.acquire)  # waits in the server
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    await lock.release()
    other = await manager.Lock()  # an unrelated lock still works; and ours is free:
    assert await other.acquire(blocking=False)
    with anyio.fail_after(10):
        assert await lock.acquire()
    await lock.release()


async def test_a_dead_holder_releases_the_lock(manager: SyncManager) -> None:
    lock = await manager.Lock()
    holding = await manager.Event()
    async with ChildProcess(children.hold_lock_forever, lock, holding) as child:
        assert await holding.wait(30)
        assert await lock.locked()
        child.kill()
        await child.join(20)
    with anyio.fail_after(20):
        assert await lock.acquire()
    await lock.release()


async def test_registered_user_class_exposed_and_method_to_typeid() -> None:
    async with children.CounterManager(process=True) as m:
        c = await m.Counter(5)  # type: ignore[attr-defined]
        assert await c.incr() == 6
        assert await c.incr(by=4) == 10
        assert await c.slow_incr(None) == 11  # a coroutine method, awaited in the server
        child = await c.spawn()  # method_to_typeid: the result stays in the server
        assert isinstance(child, AsyncProxy)
        assert await child.get() == 110
        assert await c.get() == 11
        with pytest.raises(TypeError, match="pickle"):  # the result cannot travel
            await c.unpicklable()
        assert await c.get() == 11  # ... and the connection carries on
        with pytest.raises(MethodNotExposed):
            c.reset  # noqa: B018 - the attribute lookup is what raises
        with pytest.raises(MethodNotExposed):
            await c._callmethod("reset")
        # A forged proxy that claims "reset" is exposed: the server refuses too.
        forged = AsyncProxy(
            Token("Counter", m.address, c._token.ident, (*c._token.exposed, "reset")), c._pool
        )
        with pytest.raises(MethodNotExposed, match="reset"):
            await forged.reset()
        assert await c.get() == 11
        fancy = await m.FancyCounter(3)  # type: ignore[attr-defined]
        assert isinstance(fancy, children.CounterProxy)
        assert await fancy.double() == 6
        with pytest.raises(MethodNotExposed):  # _exposed_ of the proxy type applies
            await fancy.spawn()
        await c._dispose()
        with pytest.raises(ManagerError, match="released"):
            await c.get()
        with pytest.raises(ManagerError, match="unknown type id"):
            await m.create("Nope")


async def test_connect_by_address_from_another_process_and_wrong_key() -> None:
    async with children.BoardManager(process=True) as m:
        async with ChildProcess(
            children.write_board_remotely, m.address, m.authkey, "from-child", 42, daemon=False
        ) as child:
            await child.result(timeout=30)
        board = await m.board()  # type: ignore[attr-defined]
        assert await board.getitem("from-child") == 42
        with pytest.raises(AuthenticationError):
            await children.BoardManager(m.address, b"wrong key").connect()
        # The server kept serving after the failed client.
        async with await children.BoardManager(m.address, m.authkey).connect() as again:
            board2 = await again.board()  # type: ignore[attr-defined]
            assert await board2.get("from-child") == 42


async def test_lifecycle_errors_and_nothing_left_behind() -> None:
    before = set(iter_descendants())
    m = SyncManager()
    with pytest.raises(RuntimeStateError):
        await m.dict()
    with pytest.raises(RuntimeStateError):
        _ = m.address
    async with m:
        d = await m.dict()
        await d.setitem("k", "v")
        with pytest.raises(RuntimeStateError):
            await m.start()
        address = m.address
    await m.shutdown()  # idempotent
    assert set(iter_descendants()) <= before  # the server process was reaped
    with pytest.raises(OSError):
        await SyncManager(address, b"k").connect()
    with pytest.raises(ValueError, match="authkey"):
        await SyncManager(address).connect()


async def test_proxy_pool_serves_concurrent_calls() -> None:
    async with SyncManager(process=False) as m:
        ev = await m.Event()
        d = await m.dict()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ev.wait)  # holds one connection while it waits
            await anyio.wait_all_tasks_blocked()
            await d.setitem("x", 1)  # served on another connection meanwhile
            await ev.set()
        pool: _ClientPool = d._pool
        assert len(pool._idle) == 2


def test_manager_watch_example() -> None:
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(root / "examples" / "manager_watch.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "watcher saw 3 results, total 14: [('alpha', 5), ('beta', 4), ('gamma', 5)]" in (
        proc.stdout
    )
    assert proc.stdout.rstrip().endswith("done")


async def test_a_silent_or_garbage_client_does_not_stop_the_server(manager: SyncManager) -> None:
    d = await manager.dict(k=1)
    address = manager.address
    assert isinstance(address, tuple)
    # A client that connects and never answers the challenge (the handshake
    # timeout is 10 s) must not hold up the next one.
    with socket.create_connection(address), anyio.fail_after(8):
        async with await SyncManager(address, KEY).connect() as fresh:
            other = await fresh.dict()
            await other.setitem("x", 1)
    # An authenticated client that sends garbage is dropped; the rest goes on.
    async with Client(address, authkey=KEY) as conn:
        await conn.send_bytes(b"\x80\x05garbage")
        with pytest.raises(EOFError):
            await conn.recv()
    for nonsense in [5, (), ("call",), ("call", "no-such-id", "get", (), {}), ("nope",)]:
        async with Client(address, authkey=KEY) as conn:
            await conn.send(nonsense)
            try:
                kind, _ = await conn.recv()  # refused with a reply ...
            except EOFError:
                kind = "dropped"  # ... or dropped
            assert kind in ("error", "manager-error", "dropped"), nonsense
    assert await d.getitem("k") == 1


async def test_a_queue_item_whose_client_vanished_goes_back(manager: SyncManager) -> None:
    q = await manager.Queue()
    await q.put("precious")
    await q.put("second")
    address = manager.address
    assert isinstance(address, tuple)
    async with Client(address, authkey=KEY) as conn:
        # A get whose client is gone by the time the server has the item: the
        # request, then EOF at once (a cancelled client closes its connection).
        await conn.send(("call", q._token.ident, "get", (), {}))
        half = socket.socket(fileno=os.dup(conn.fileno()))
        half.shutdown(socket.SHUT_WR)
        half.close()
        with pytest.raises(EOFError):  # the server dropped it, reply unsent
            await conn.recv()
    assert await q.qsize() == 2
    assert [await q.get(), await q.get()] == ["precious", "second"]  # order kept
