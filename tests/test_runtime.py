"""The runtime: run(), loop selection, ordered shutdown, embedding, signals policy."""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Awaitable
from pathlib import Path

import anyio
import pytest

import anycore
from anycore import Phase

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# -- run() --------------------------------------------------------------------


def test_run_returns_main_result() -> None:
    async def main(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    assert anycore.run(main, 2, 3) == 5


def test_run_raises_main_error() -> None:
    async def main() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        anycore.run(main)


def test_run_given_a_coroutine_says_pass_the_function() -> None:
    async def main() -> None:
        pass

    coro = main()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 'never awaited' warning would fail here
        with pytest.raises(TypeError, match=r"pass the function, not a coroutine.*run\(.*main\)"):
            anycore.run(coro)  # type: ignore[arg-type]
        assert coro.cr_frame is None  # closed: nothing left to warn about
        del coro
        gc.collect()


def test_run_given_a_sync_function_says_use_async_def() -> None:
    calls: list[int] = []

    def main(x: int) -> int:
        calls.append(x)
        return x

    with pytest.raises(TypeError, match=r"main returned int, not a coroutine.*async def"):
        anycore.run(main, 1)  # type: ignore[arg-type]
    assert calls == [1]


def test_run_given_neither_function_nor_coroutine() -> None:
    with pytest.raises(TypeError, match="takes an async function, not 42"):
        anycore.run(42)  # type: ignore[arg-type]
    future: asyncio.Future[None] = asyncio.Future(loop=asyncio.new_event_loop())
    with pytest.raises(TypeError, match="not an awaitable Future"):
        anycore.run(future)  # type: ignore[arg-type]
    future.get_loop().close()


def test_run_accepts_a_sync_wrapper_that_returns_a_coroutine() -> None:
    async def inner(x: int) -> int:
        return x * 2

    def wrapper(x: int) -> Awaitable[int]:
        return inner(x)

    assert anycore.run(wrapper, 21) == 42
    assert anycore.run(functools.partial(inner, 4)) == 8


def test_run_unwraps_single_exception_group() -> None:
    async def fail() -> None:
        raise ValueError("inner")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(fail)

    with pytest.raises(ValueError, match="inner"):
        anycore.run(main)


def test_run_keeps_groups_with_several_errors() -> None:
    async def fail(exc: Exception) -> None:
        raise exc

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(fail, ValueError("a"))
            tg.start_soon(fail, KeyError("b"))

    with pytest.raises(BaseExceptionGroup) as info:
        anycore.run(main)
    assert len(info.value.exceptions) == 2


@pytest.mark.parametrize(
    ("choice", "module"), [("asyncio", "asyncio"), ("uvloop", "uvloop"), ("auto", "uvloop")]
)
def test_loop_selection(choice: str, module: str) -> None:
    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert anycore.run(main, loop=choice).startswith(module)  # type: ignore[arg-type]


def test_unknown_loop_name() -> None:
    async def main() -> None:
        pass

    with pytest.raises(ValueError, match="loop must be"):
        anycore.run(main, loop="tokio")  # type: ignore[arg-type]


def test_missing_uvloop_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)

    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    with pytest.raises(anycore.LoopUnavailable, match="uvloop is not installed"):
        anycore.run(main, loop="uvloop")
    assert anycore.run(main, loop="auto").startswith("asyncio")


def test_debug_flag_reaches_the_loop() -> None:
    async def main() -> bool:
        return asyncio.get_running_loop().get_debug()

    assert anycore.run(main, debug=True, loop="asyncio") is True


def test_signal_handlers_restored_after_run() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}

    async def main() -> None:
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]

    anycore.run(main)
    assert {sig: signal.getsignal(sig) for sig in before} == before


# -- ordered shutdown ---------------------------------------------------------


async def test_shutdown_runs_phases_in_order() -> None:
    order: list[str] = []

    def step(name: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            await asyncio.sleep(0)
            order.append(name)

        return run

    async with anycore.open_runtime(handle_signals=False) as runtime:
        # Registered out of order on purpose.
        runtime.add_shutdown_step(Phase.LOGS, "logs", step("logs"))
        runtime.add_shutdown_step(Phase.POOLS, "pools", step("pools"))
        runtime.add_shutdown_step(Phase.STOP_ACCEPTING, "listener", step("listener"))
        runtime.add_shutdown_step(Phase.PROCESSES, "processes", step("processes"))
        runtime.add_shutdown_step(Phase.DRAIN, "drain", step("drain"))

        async def bg() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                order.append("background task")

        anycore.spawn(bg, name="bg")
        await asyncio.sleep(0)
    assert order == ["listener", "drain", "processes", "pools", "background task", "logs"]
    assert runtime.report.reason == "main finished"
    ours = {"logs", "pools", "listener", "processes", "drain"}
    assert [s.outcome for s in runtime.report.steps if s.name in ours] == ["done"] * 5


async def test_api_shutdown_drains_before_cancelling_main() -> None:
    order: list[str] = []
    drained = asyncio.Event()
    draining = asyncio.Event()

    async def drain() -> None:
        order.append("drain started")
        draining.set()
        await drained.wait()
        order.append("drain done")

    async with anycore.open_runtime(handle_signals=False) as runtime:
        runtime.add_shutdown_step(Phase.DRAIN, "connections", drain)
        runtime.shutdown("test")
        try:
            await draining.wait()
            order.append("main still running during drain")
            drained.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            order.append("main cancelled")
            raise
    order.append("after block")
    assert order == [
        "drain started",
        "main still running during drain",
        "drain done",
        "main cancelled",
        "after block",
    ]
    assert runtime.report.reason == "test"


async def test_steps_past_their_deadline_are_cancelled_and_reported() -> None:
    cancelled = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def fine() -> None:
        pass

    async def broken() -> None:
        raise OSError("disk gone")

    async with anycore.open_runtime(handle_signals=False, shutdown_timeout=0.2) as runtime:
        runtime.add_shutdown_step(Phase.PROCESSES, "stuck", stuck)
        runtime.add_shutdown_step(Phase.PROCESSES, "fine", fine)
        runtime.add_shutdown_step(Phase.LOGS, "broken", broken)
    assert cancelled.is_set()
    assert runtime.report.unfinished == ["stuck"]
    assert runtime.report.failed == ["broken"]


async def test_removed_step_does_not_run() -> None:
    ran: list[str] = []

    async def step() -> None:
        ran.append("step")

    async with anycore.open_runtime(handle_signals=False) as runtime:
        handle = runtime.add_shutdown_step(Phase.POOLS, "x", step)
        handle.remove()
        handle.remove()
    assert ran == []


async def test_runtime_phases_are_reserved() -> None:
    async with anycore.open_runtime(handle_signals=False) as runtime:

        async def step() -> None:
            pass

        with pytest.raises(ValueError, match="runtime's own"):
            runtime.add_shutdown_step(Phase.MAIN, "x", step)


async def test_one_runtime_per_loop_and_current_runtime() -> None:
    assert anycore.current_runtime() is None
    async with anycore.open_runtime(handle_signals=False) as runtime:
        assert anycore.current_runtime() is runtime
        with pytest.raises(anycore.RuntimeStateError):
            async with anycore.open_runtime(handle_signals=False):
                pass
    assert anycore.current_runtime() is None


async def test_main_error_still_runs_shutdown() -> None:
    ran: list[str] = []

    async def flush() -> None:
        ran.append("flushed")

    async def main() -> None:
        async with anycore.open_runtime(handle_signals=False) as runtime:
            runtime.add_shutdown_step(Phase.LOGS, "logs", flush)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await main()
    assert ran == ["flushed"]


def test_api_shutdown_makes_run_exit_gracefully() -> None:
    async def main() -> None:
        runtime = anycore.current_runtime()
        assert runtime is not None
        asyncio.get_running_loop().call_later(0.01, runtime.shutdown)
        await asyncio.Event().wait()

    with pytest.raises(anycore.GracefulExit) as info:
        anycore.run(main)
    assert info.value.code == 0
    assert info.value.signal is None


async def test_reload_hooks_sync_and_async() -> None:
    seen: list[str] = []

    async def async_hook() -> None:
        seen.append("async")

    async with anycore.open_runtime(handle_signals=False) as runtime:
        runtime.add_reload_hook(lambda: seen.append("sync"))
        runtime.add_reload_hook(async_hook)
        await runtime.reload()
    assert seen == ["sync", "async"]


def test_embedding_in_plain_asyncio_run() -> None:
    async def app() -> list[str]:
        order: list[str] = []

        async def step() -> None:
            order.append("step")

        async with anycore.open_runtime() as runtime:
            runtime.add_shutdown_step(Phase.POOLS, "x", step)
            order.append("body")
        return order

    assert asyncio.run(app()) == ["body", "step"]


def test_embedding_in_anyio_run() -> None:
    async def app() -> str:
        async with anycore.open_runtime(handle_signals=False):
            await anyio.sleep(0)
        return "ok"

    assert anyio.run(app) == "ok"


def test_runtime_in_a_thread_does_not_touch_signals() -> None:
    result: list[object] = []

    def thread_main() -> None:
        async def app() -> None:
            async with anycore.open_runtime() as runtime:
                result.append(runtime.handle_signals)

        asyncio.run(app())

    t = threading.Thread(target=thread_main)
    t.start()
    t.join(10)
    assert result == [True]


# -- real signals to a real process -------------------------------------------


def _start_demo(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "runtime_demo.py"), "--interval", "0.05", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("ready"), first + proc.stderr.read()  # type: ignore[union-attr]
    return proc


def _read_until(proc: subprocess.Popen[str], marker: str) -> list[str]:
    assert proc.stdout is not None
    lines = []
    for _ in range(10_000):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if marker in line:
            break
    return lines


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_starts_ordered_shutdown_and_exits_zero(loop: str, sig: int) -> None:
    proc = _start_demo("--loop", loop)
    try:
        _read_until(proc, "tick 1")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = [line for line in out.splitlines() if not line.startswith("tick")]
    assert lines == [
        "shutdown: stop accepting",
        "shutdown: drain connections",
        "main: cancelled",
        "shutdown: stop workers",
        "shutdown: flush logs",
    ]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_second_sigint_forces_exit_130(loop: str) -> None:
    proc = _start_demo("--loop", loop, "--hang-drain")
    try:
        _read_until(proc, "tick 1")
        proc.send_signal(signal.SIGINT)
        _read_until(proc, "shutdown: drain connections")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "shutdown: stop workers" not in out


def test_sighup_runs_reload_hooks_and_keeps_running() -> None:
    proc = _start_demo()
    try:
        _read_until(proc, "tick 1")
        proc.send_signal(signal.SIGHUP)
        lines = _read_until(proc, "reload:")
        assert lines[-1] == "reload: configuration reloaded"
        proc.send_signal(signal.SIGUSR1)
        assert _read_until(proc, "background:")[-1] == "background: got SIGUSR1"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0


def test_demo_runs_to_completion_when_bounded() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "runtime_demo.py"), "--ticks", "3", "--interval", "0.01"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "tick 2" in out
    assert out.rstrip().endswith("finished after 3 ticks")
    assert os.linesep in out


def test_trio_runtime_stops_and_drains_a_server_before_cancelling_main() -> None:
    # On trio the runtime's shutdown drains servers like on asyncio: the
    # connection in progress finishes its reply before main is cancelled.
    events: list[str] = []
    handling = anyio.Event()

    class Slow(anycore.LineHandler):
        async def line_received(self, line: bytes) -> None:
            events.append("handling")
            handling.set()
            await anyio.sleep(0.1)  # work in progress when shutdown starts
            self.send_line(b"done")

        def connection_lost(self, exc: BaseException | None) -> None:
            events.append("lost")

    async def main() -> None:
        async with (
            anycore.open_runtime(handle_signals=False) as runtime,
            anycore.serve(Slow, "tcp://127.0.0.1:0") as server,
        ):
            port = server.endpoints[0].port or 0
            async with await anyio.connect_tcp("127.0.0.1", port) as client:
                await client.send(b"go\r\n")
                await handling.wait()
                runtime.shutdown("test")
                assert await client.receive() == b"done\r\n"
                await anyio.sleep_forever()  # main: cancelled after the drain
        events.append("main over")
        assert [s.name for s in runtime.report.steps][:2] == [
            f"server {server.endpoints[0]}",
            f"server {server.endpoints[0]}",
        ]

    async def bounded() -> None:
        with anyio.fail_after(20):
            await main()

    anyio.run(bounded, backend="trio")
    assert events == ["handling", "lost", "main over"]
