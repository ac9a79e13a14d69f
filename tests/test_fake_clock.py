"""anycore.testing.FakeClock: virtual time for the asyncio loop."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

import anycore
import anycore.logging
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


# -- timers, idle timeouts and lag on virtual time: exact, whatever the machine's load --


@pytest.mark.parametrize(
    ("overrun", "expected"),
    [
        # (index, missed, scheduled, now) of each tick; the body of tick 0 "blocks" 3.5 s
        ("skip", [(0, 0, 0.0, 0.0), (3, 2, 3.0, 3.5), (4, 0, 4.0, 4.0), (5, 0, 5.0, 5.0)]),
        ("burst", [(0, 0, 0.0, 0.0), (1, 0, 1.0, 3.5), (2, 0, 2.0, 3.5), (3, 0, 3.0, 3.5)]),
        ("delay", [(0, 0, 0.0, 0.0), (1, 0, 3.5, 3.5), (2, 0, 4.5, 4.5), (3, 0, 5.5, 5.5)]),
    ],
)
def test_every_overrun_policies_exactly(
    overrun: str, expected: list[tuple[int, int, float, float]]
) -> None:
    clock = FakeClock()

    async def main() -> list[tuple[int, int, float, float]]:
        seen = []
        async for tick in anycore.every(1.0, overrun=overrun, limit=4):  # type: ignore[arg-type]
            seen.append((tick.index, tick.missed, tick.scheduled, tick.now))
            if tick.index == 0:
                clock.advance(3.5)  # the loop is busy for 3.5 s
        return seen

    assert clock.run(main) == expected


def test_idle_timeout_closes_a_silent_connection_at_its_deadline() -> None:
    # Real loopback sockets; 0.3 s of real idleness lets the clock jump.
    clock = FakeClock(autojump_threshold=0.3)

    class Echo(anycore.LineHandler):
        delimiter = b"\n"

        def line_received(self, line: bytes) -> None:
            self.send_line(line)

    async def main() -> tuple[float, float, bytes]:
        loop = asyncio.get_running_loop()
        async with anycore.serve(Echo, "tcp://127.0.0.1:0", idle_timeout=600) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"hi\n")
            assert await reader.readline() == b"hi\n"
            last_activity = loop.time()
            rest = await reader.read()  # b"" once the server closes for idleness
            closed_at = loop.time()
            writer.close()
        return last_activity, closed_at, rest

    last_activity, closed_at, rest = clock.run(main)
    assert rest == b""
    # Closed once 600 virtual seconds passed without a byte, not before, and
    # within one check of the deadline (idle checks run at a fraction of it).
    assert 600 <= closed_at - last_activity <= 600 * 1.5


def test_lag_monitor_measures_a_blocked_loop_exactly() -> None:
    clock = FakeClock()
    lags: list[float] = []

    async def main() -> anycore.logging.LagStatistics:
        async with anycore.logging.monitor_loop_lag(
            threshold=0.1, interval=0.025, on_lag=lambda lag, stack: lags.append(lag)
        ) as monitor:
            await asyncio.sleep(1.0)  # 40 heartbeats, on time
            clock.advance(0.3)  # a callback that holds the loop for 0.3 s
            await asyncio.sleep(1.0)
            return monitor.statistics()

    stats = clock.run(main)
    assert len(lags) == 1
    assert stats.over_threshold == 1
    # The heartbeat was due at most one interval before the block started.
    assert 0.3 - 0.025 <= lags[0] <= 0.3
    assert stats.max_lag == lags[0]
    assert stats.beats >= 75
