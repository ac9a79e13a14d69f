"""anycore.testing.FakeClock: virtual time for the asyncio loop."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

import anycore
from anycore.testing import FakeClock


def test_an_hour_of_ticks_in_virtual_time() -> None:
    clock = FakeClock(start=100.0)

    async def main() -> list[anycore.Tick]:
        return [tick async for tick in anycore.every(1.0, limit=3600)]

    started = time.monotonic()
    ticks = clock.run(main)
    assert time.monotonic() - started < 30  # virtual: far less than an hour
    assert [t.index for t in ticks] == list(range(3600))
    assert all(t.scheduled == 100.0 + t.index for t in ticks)
    assert all(t.now == t.scheduled for t in ticks)  # no lateness in virtual time
    assert clock.time() == pytest.approx(100.0 + 3599)


def test_timer_and_deadline_in_virtual_time() -> None:
    clock = FakeClock()

    async def main() -> tuple[float, bool]:
        fired_at: list[float] = []
        loop = asyncio.get_running_loop()
        timer = anycore.Timer(3600, lambda: fired_at.append(loop.time()))
        timer.start()
        await timer.wait()
        with anycore.move_on_after(86400) as scope:
            await asyncio.Event().wait()
        return fired_at[0], scope.cancelled_caught

    fired, cancelled = clock.run(main)
    assert fired == 3600
    assert cancelled
    assert clock.time() == pytest.approx(3600 + 86400)


def test_manual_advance_without_autojump() -> None:
    clock = FakeClock(autojump_threshold=math.inf)

    async def main() -> list[str]:
        order: list[str] = []

        async def sleeper() -> None:
            await asyncio.sleep(10)
            order.append(f"woke at {asyncio.get_running_loop().time():.0f}")

        task = asyncio.create_task(sleeper())
        await asyncio.sleep(0)
        clock.advance(9)
        await asyncio.sleep(0)
        order.append("not yet")
        clock.advance(1)
        await task
        return order

    assert clock.run(main) == ["not yet", "woke at 10"]
    assert clock.jumps == 0


def test_real_io_still_works_under_fake_clock() -> None:
    # I/O gets up to 2 s of real time before a timer jump may fire wait_for.
    clock = FakeClock(autojump_threshold=2.0)

    async def main() -> bytes:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping\n")
            line = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            await writer.wait_closed()
        return line

    assert clock.run(main) == b"ping\n"


def test_clock_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="backwards"):
        FakeClock().advance(-1)
    with pytest.raises(ValueError, match="autojump"):
        FakeClock(autojump_threshold=-1)
