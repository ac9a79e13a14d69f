"""Timers (Timer, every, deadlines) and task helpers (spawn, listing, TaskLocal)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest

import anycore

# -- every() ------------------------------------------------------------------


async def test_every_keeps_its_schedule_over_200_ticks() -> None:
    interval = 0.002
    ticks = [tick async for tick in anycore.every(interval, limit=200)]
    assert len(ticks) == 200
    assert ticks[0].index == 0
    start = ticks[0].scheduled
    for prev, tick in itertools.pairwise(ticks):
        # Ticks come in order; a loaded machine may skip some (counted).
        assert tick.index == prev.index + 1 + tick.missed
    for tick in ticks:
        # No drift: tick n is due at start + n * interval, however late the
        # ones before it were delivered.
        assert tick.scheduled == pytest.approx(start + tick.index * interval, abs=1e-9)
        assert tick.now >= tick.scheduled


async def test_every_skip_policy_drops_missed_ticks() -> None:
    interval = 0.01
    seen = []
    async for tick in anycore.every(interval, limit=3):
        seen.append(tick)
        if tick.index == 0:
            time.sleep(interval * 3.5)  # block the loop: overrun 3 ticks
    assert seen[1].missed >= 2
    assert seen[1].index == seen[1].missed + 1
    assert seen[1].scheduled == pytest.approx(seen[0].scheduled + seen[1].index * interval)
    assert seen[2].index == seen[1].index + 1


async def test_every_burst_policy_delivers_every_tick() -> None:
    interval = 0.01
    seen = []
    async for tick in anycore.every(interval, overrun="burst", limit=5):
        seen.append(tick)
        if tick.index == 0:
            time.sleep(interval * 3.5)
    assert [t.index for t in seen] == [0, 1, 2, 3, 4]
    assert all(t.missed == 0 for t in seen)
    # The caught-up ticks were delivered late, back to back.
    assert seen[1].lateness > interval


async def test_every_delay_policy_restarts_the_schedule() -> None:
    interval = 0.01
    seen = []
    async for tick in anycore.every(interval, overrun="delay", limit=3):
        seen.append(tick)
        if tick.index == 0:
            time.sleep(interval * 3.5)
    assert [t.index for t in seen] == [0, 1, 2]
    assert seen[1].scheduled > seen[0].scheduled + 3 * interval
    assert seen[2].scheduled == pytest.approx(seen[1].scheduled + interval)


async def test_every_delay_before_first_tick() -> None:
    loop = asyncio.get_running_loop()
    before = loop.time()
    tick = await anext(aiter(anycore.every(1.0, delay=0.02)))
    assert tick.scheduled >= before + 0.02


def test_every_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="interval"):
        anycore.every(0)
    with pytest.raises(ValueError, match="overrun"):
        anycore.every(1, overrun="later")  # type: ignore[arg-type]


# -- Timer -----------------------------------------------------------------------


async def test_timer_fires_once_with_args() -> None:
    done = asyncio.Event()
    calls: list[tuple[int, str]] = []

    def fn(a: int, b: str) -> None:
        calls.append((a, b))
        done.set()

    timer = anycore.Timer(0.001, fn, 1, b="x")
    timer.start()
    assert timer.is_alive()
    await timer.wait()
    assert calls == [(1, "x")]
    assert timer.fired
    assert not timer.is_alive()
    with pytest.raises(anycore.RuntimeStateError):
        timer.start()


async def test_timer_cancel_before_firing() -> None:
    calls: list[int] = []
    timer = anycore.Timer(60, calls.append, 1)
    timer.start()
    timer.cancel()
    await timer.wait()
    assert calls == []
    assert not timer.fired


async def test_timer_async_function_and_scope() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with anycore.Timer(0, slow) as timer:
        await started.wait()
    # Leaving the scope cancelled the running function: nothing outlives it.
    assert cancelled.is_set()
    assert not timer.is_alive()


async def test_timer_error_is_logged_and_kept(caplog: pytest.LogCaptureFixture) -> None:
    def bad() -> None:
        raise ValueError("timer bug")

    timer = anycore.Timer(0, bad)
    timer.start()
    await timer.wait()
    assert isinstance(timer.exception, ValueError)
    assert "timer bug" in caplog.text


def test_timer_rejects_negative_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        anycore.Timer(-1, print)


async def test_deadlines_are_anyio_cancel_scopes() -> None:
    with pytest.raises(TimeoutError), anycore.fail_after(0.01):
        await asyncio.Event().wait()
    with anycore.move_on_after(0.01) as scope:
        await asyncio.Event().wait()
    assert scope.cancelled_caught


# -- tasks -----------------------------------------------------------------------


async def test_spawned_task_is_listed_and_owned_by_runtime() -> None:
    async with anycore.open_runtime(handle_signals=False) as runtime:
        gate = asyncio.Event()
        task = anycore.spawn(gate.wait, name="worker-1")
        await asyncio.sleep(0)
        assert "worker-1" in [t.get_name() for t in anycore.live_tasks()]
        assert task in runtime.tasks
        assert anycore.active_count() >= 2
    assert task.cancelled()


async def test_spawn_without_runtime_keeps_reference_and_logs_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fail() -> None:
        raise RuntimeError("daemon failed")

    task = anycore.spawn(fail, name="failing")
    with caplog.at_level(logging.ERROR, logger="anycore.tasks"):
        await asyncio.wait([task])
        await asyncio.sleep(0)
    assert "daemon failed" in caplog.text
    assert "failing" in caplog.text


async def test_task_local_is_isolated_per_task() -> None:
    local = anycore.TaskLocal(user="nobody")
    local.user = "parent"
    seen: dict[str, str] = {}

    async def child(name: str) -> None:
        seen[name + ":before"] = local.user
        local.user = name
        await asyncio.sleep(0)
        seen[name + ":after"] = local.user

    await asyncio.gather(child("a"), child("b"))
    assert seen == {"a:before": "parent", "b:before": "parent", "a:after": "a", "b:after": "b"}
    assert local.user == "parent"
    del local.user
    with pytest.raises(AttributeError):
        _ = local.user
    with pytest.raises(AttributeError):
        _ = local.missing

    async def fresh() -> str:
        return str(local.user)

    # A context that never set it sees the defaults.
    import contextvars

    assert (
        await asyncio.get_running_loop().create_task(fresh(), context=contextvars.Context())
        == "nobody"
    )


def test_every_and_timer_on_trio_run_on_trios_clock() -> None:
    # every() and Timer read anyio.current_time(): under trio that is trio's
    # clock, so trio's MockClock drives them (a day of timers in milliseconds).
    import trio
    import trio.testing

    async def main() -> tuple[list[int], list[int], float]:
        ticks = [tick.index async for tick in anycore.every(3600.0, limit=3)]
        fired: list[int] = []
        async with anycore.Timer(86400.0, fired.append, 1) as timer:
            await timer.wait()
        cancelled = anycore.Timer(10.0, fired.append, 2)
        cancelled.start()
        cancelled.cancel()
        await cancelled.wait()
        return ticks, fired, trio.current_time()

    ticks, fired, now = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert ticks == [0, 1, 2]
    assert fired == [1]
    assert now == 2 * 3600.0 + 86400.0
