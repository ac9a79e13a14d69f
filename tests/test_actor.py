"""Tests for Actor (a task with a mailbox)."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from _support import settle
from anycore._workers._actor import Actor
from anycore.errors import BrokenError, ClosedError, QueueClosed, QueueFull


async def test_messages_are_handled_in_order_and_close_drains() -> None:
    seen: list[int] = []

    async def handler(msg: int) -> None:
        await asyncio.sleep(0)
        seen.append(msg)

    async with Actor(handler, mailbox_size=0) as actor:
        for i in range(100):
            actor.send_nowait(i)
        assert actor.statistics().queued > 0
    # Leaving the block waited for the whole mailbox.
    assert seen == list(range(100))
    stats = actor.statistics()
    assert stats.handled == 100
    assert stats.closed
    assert not stats.running
    with pytest.raises(QueueClosed):
        await actor.send(1)
    assert isinstance(QueueClosed(), ClosedError)


async def test_ask_returns_the_reply_and_sync_handlers_work() -> None:
    state = {"total": 0}

    def add(n: int) -> int:
        state["total"] += n
        return state["total"]

    async with Actor(add) as actor:
        assert await actor.ask(2) == 2
        assert await actor.ask(3) == 5
        replies = await asyncio.gather(*(actor.ask(1) for _ in range(5)))
    assert sorted(replies) == [6, 7, 8, 9, 10]


async def test_ask_error_goes_to_the_asker_and_the_actor_carries_on() -> None:
    async def handler(msg: str) -> str:
        if msg == "bad":
            raise KeyError(msg)
        return msg.upper()

    async with Actor(handler) as actor:
        with pytest.raises(KeyError):
            await actor.ask("bad")
        assert await actor.ask("ok") == "OK"
    assert actor.statistics().failed == 1


async def test_failing_send_stops_the_actor_and_surfaces_at_exit() -> None:
    handled: list[int] = []

    async def handler(msg: int) -> int:
        if msg == 3:
            raise ValueError("three")
        handled.append(msg)
        return msg

    pending_ask: asyncio.Future[int] | None = None

    async def body() -> None:
        nonlocal pending_ask
        async with Actor(handler, mailbox_size=0) as actor:
            for i in range(5):
                await actor.send(i)
            pending_ask = asyncio.ensure_future(actor.ask(99))
            await settle()
            assert pending_ask.done()
            with pytest.raises(BrokenError):
                await actor.send(7)

    with pytest.raises(ValueError, match="three"):
        await body()
    assert handled == [0, 1, 2]
    assert pending_ask is not None
    with pytest.raises(BrokenError):
        await pending_ask


async def test_bounded_mailbox_applies_backpressure() -> None:
    release = asyncio.Event()

    async def slow(msg: int) -> None:
        await release.wait()

    async with Actor(slow, mailbox_size=2) as actor:
        actor.send_nowait(0)
        await settle()  # the actor took 0 and is stuck in the handler
        actor.send_nowait(1)
        actor.send_nowait(2)
        with pytest.raises(QueueFull):
            actor.send_nowait(3)
        blocked = asyncio.ensure_future(actor.send(3))
        await settle()
        assert not blocked.done()
        release.set()
        await blocked
    assert actor.statistics().handled == 4


async def test_sync_send_from_a_thread() -> None:
    got: list[str] = []
    async with Actor(got.append, mailbox_size=4) as actor:

        def post() -> None:
            for i in range(50):
                actor.sync_send(f"m{i}")

        await anyio.to_thread.run_sync(post)
    assert got == [f"m{i}" for i in range(50)]


async def test_exception_in_the_block_cancels_instead_of_draining() -> None:
    started = asyncio.Event()

    async def stuck(msg: int) -> None:
        started.set()
        await asyncio.Event().wait()

    ask: asyncio.Future[None] | None = None
    actor: Actor[int, None] = Actor(stuck, mailbox_size=0)

    async def body() -> None:
        nonlocal ask
        async with actor:
            await actor.send(0)
            ask = asyncio.ensure_future(actor.ask(1))
            await started.wait()
            await settle()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await body()
    assert not actor.statistics().running
    assert ask is not None
    with pytest.raises(BrokenError):
        await ask


async def test_cancelled_ask_is_skipped() -> None:
    release = asyncio.Event()
    seen: list[str] = []

    async def handler(msg: str) -> None:
        if msg == "first":
            await release.wait()
        seen.append(msg)

    async with Actor(handler) as actor:
        await actor.send("first")
        skipped = asyncio.ensure_future(actor.ask("skipped"))
        await settle()
        skipped.cancel()
        await settle()
        release.set()
        await actor.send("last")
    assert seen == ["first", "last"]


async def test_start_twice_is_refused() -> None:
    actor: Actor[int, None] = Actor(lambda m: None)
    actor.start()
    with pytest.raises(RuntimeError):
        actor.start()
    await actor.aclose()
