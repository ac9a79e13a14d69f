"""ChildProcess: Python callables in child processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from anycore._workers._child import ChildProcess, iter_descendants
from anycore.errors import ChildProcessFailed, RemoteError, RuntimeStateError
from test_pools_workers import (
    add,
    announce_and_sleep,
    async_double,
    exit_now,
    exit_with,
    fail,
    fail_unpicklable,
    flush_then_raise,
    flush_then_return,
    flush_then_sleep,
    segfault,
)


def _helpers() -> set[int]:
    """multiprocessing's shared helper processes (fork server, resource tracker)."""
    pids: set[int] = set()
    from multiprocessing import forkserver, resource_tracker

    fs = getattr(forkserver, "_forkserver", None)
    if fs is not None and getattr(fs, "_forkserver_pid", None):
        pids.add(fs._forkserver_pid)
    rt = getattr(resource_tracker, "_resource_tracker", None)
    if rt is not None and getattr(rt, "_pid", None):
        pids.add(rt._pid)
    from anycore._proc._spawn import _guard

    if _guard.pid > 0:
        pids.add(_guard.pid)  # the die_with_parent guard lives as long as we do
    return pids


def assert_no_descendants(deadline: float = 5.0) -> None:
    """No process started by the test is left (polls /proc, bounded)."""
    end = time.monotonic() + deadline
    while True:
        left = set(iter_descendants()) - _helpers()
        if not left or time.monotonic() > end:
            break
        time.sleep(0.01)
    assert not left, f"processes left behind: {sorted(left)}"


async def wait_for_file(path: Path, deadline: float = 20.0) -> str:
    """Poll for a file the child writes (OS state), bounded."""
    end = time.monotonic() + deadline
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        await asyncio.sleep(0.005)
    return path.read_text()


async def test_result_exitcode_pid_name() -> None:
    async with ChildProcess(add, 2, 3, name="adder") as child:
        assert child.pid is not None
        assert child.pid != os.getpid()
        assert child.name == "adder"
        assert await child.result() == 5
    assert child.exitcode == 0
    assert not child.is_alive()
    assert_no_descendants()


async def test_kwargs_and_coroutine_target() -> None:
    async with ChildProcess(add, 1, kwargs={"b": 41}) as child:
        assert await child.result() == 42
    async with ChildProcess(async_double, 21) as child:
        assert await child.result() == 42


async def test_lambda_and_closure_via_cloudpickle() -> None:
    pytest.importorskip("cloudpickle")
    base = 10

    def closure(x: int) -> int:
        return base + x

    async with ChildProcess(closure, 5) as child:
        assert await child.result() == 15
    async with ChildProcess(lambda: os.getpid()) as child:
        assert await child.result() == child.pid


async def test_exception_is_delivered_with_remote_traceback() -> None:
    async with ChildProcess(fail, "boom") as child:
        with pytest.raises(RemoteError) as info:
            await child.result()
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value.__cause__) == "boom"
    assert "in fail" in info.value.remote_traceback
    assert "ValueError: boom" in info.value.remote_traceback
    assert child.exitcode == 1


async def test_unpicklable_exception_still_reported() -> None:
    async with ChildProcess(fail_unpicklable) as child:
        with pytest.raises(RemoteError) as info:
            await child.result()
    assert info.value.__cause__ is None
    assert "Unpicklable" in str(info.value)
    assert "cannot travel" in info.value.remote_traceback


@pytest.mark.parametrize(
    ("target", "args", "code"),
    [(exit_now, (3,), 3), (segfault, (), -signal.SIGSEGV), (exit_with, (4,), 4)],
)
async def test_child_dying_without_result(target: object, args: tuple[int, ...], code: int) -> None:
    async with ChildProcess(target, *args) as child:  # type: ignore[arg-type]
        with pytest.raises(ChildProcessFailed):
            await child.result()
    assert child.exitcode == code


async def test_sys_exit_zero_returns_none() -> None:
    async with ChildProcess(exit_with, 0) as child:
        assert await child.result() is None
    assert child.exitcode == 0


async def test_daemon_child_is_stopped_when_scope_ends(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    async with ChildProcess(announce_and_sleep, str(ready)) as child:
        assert int(await wait_for_file(ready)) == child.pid
        assert child.is_alive()
    assert child.exitcode == -signal.SIGTERM
    assert_no_descendants()


async def test_non_daemon_child_is_waited_for() -> None:
    async with ChildProcess(add, 1, 1, daemon=False) as child:
        pass
    assert child.exitcode == 0
    assert await child.result() == 2


async def test_non_daemon_child_is_stopped_on_cancellation(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child: ChildProcess[None] | None = None
    with anyio.CancelScope() as scope:
        async with ChildProcess(announce_and_sleep, str(ready), daemon=False) as child:
            await wait_for_file(ready)
            scope.cancel()
            await anyio.sleep_forever()
    assert child is not None
    assert child.exitcode == -signal.SIGTERM
    assert_no_descendants()


async def test_join_timeout_terminate_and_flush_hook(tmp_path: Path) -> None:
    flushed, ready = tmp_path / "flushed", tmp_path / "ready"
    async with ChildProcess(flush_then_sleep, str(flushed), str(ready)) as child:
        await wait_for_file(ready)
        assert await child.join(timeout=0.01) is None
        assert child.exitcode is None
        child.terminate()
        assert await child.join() == -signal.SIGTERM
    assert flushed.read_text() == "flushed"  # os._exit skipped nothing of ours


async def test_kill_runs_no_hook(tmp_path: Path) -> None:
    flushed, ready = tmp_path / "flushed", tmp_path / "ready"
    async with ChildProcess(flush_then_sleep, str(flushed), str(ready)) as child:
        await wait_for_file(ready)
        child.kill()
        assert await child.join() == -signal.SIGKILL
        with pytest.raises(ChildProcessFailed, match="SIGKILL"):
            await child.result()
    assert not flushed.exists()


async def test_flush_hooks_run_on_return_and_on_exception(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    async with ChildProcess(flush_then_return, str(a), 7) as child:
        assert await child.result() == 7
    async with ChildProcess(flush_then_raise, str(b)) as child:
        with pytest.raises(RemoteError):
            await child.result()
    assert a.read_text() == b.read_text() == "flushed"


async def test_loop_is_not_blocked_while_waiting(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async with ChildProcess(announce_and_sleep, str(ready), 0.3) as child:
        task = asyncio.create_task(ticker())
        await child.join()
        task.cancel()
    assert child.exitcode == 0
    assert ticks > 10


async def test_start_twice_and_join_before_start() -> None:
    child = ChildProcess(add, 1, 2)
    with pytest.raises(RuntimeStateError):
        await child.join()
    await child.start()
    with pytest.raises(RuntimeStateError):
        await child.start()
    assert await child.result() == 3
    await child.aclose()


async def test_result_timeout(tmp_path: Path) -> None:
    async with ChildProcess(announce_and_sleep, str(tmp_path / "r")) as child:
        with pytest.raises(TimeoutError):
            await child.result(timeout=0.01)


async def test_spawn_context() -> None:
    async with ChildProcess(add, 20, 22, context="spawn") as child:
        assert await child.result() == 42


def test_default_start_method_is_forkserver_on_linux() -> None:
    from anycore._workers._start import default_context

    ctx = default_context()
    assert isinstance(ctx, multiprocessing.context.BaseContext)
    if os.uname().sysname == "Linux":
        assert ctx.get_start_method() == "forkserver"


async def test_register_false_leaves_the_child_to_its_owner(tmp_path: Path) -> None:
    from anycore import open_runtime

    owned = ChildProcess(announce_and_sleep, str(tmp_path / "owned"), register=False)
    try:
        async with open_runtime(handle_signals=False):
            registered = ChildProcess(announce_and_sleep, str(tmp_path / "registered"))
            await registered.start()  # deliberately not closed by the body
            await owned.start()
            await wait_for_file(tmp_path / "registered")
            await wait_for_file(tmp_path / "owned")
        # The runtime's PROCESSES step stopped the registered child only.
        assert registered.exitcode == -signal.SIGTERM
        assert owned.is_alive()
    finally:
        await owned.aclose()
    assert owned.exitcode == -signal.SIGTERM
    assert_no_descendants()


class _GatedContext:
    """A start-method context whose Process.start waits for the test's go."""

    def __init__(self) -> None:
        import threading

        self.inner = multiprocessing.get_context("spawn")
        self.go = threading.Event()
        self.started: list[object] = []

    def get_start_method(self) -> str:
        return "spawn"

    def Process(self, **kwargs: object) -> object:
        process = _GatedProcess(self.inner.Process(**kwargs), self.go)  # type: ignore[arg-type]
        self.started.append(process)
        return process


class _GatedProcess:
    def __init__(self, real: object, gate: Any) -> None:
        self._real = real
        self._gate = gate

    def start(self) -> None:
        assert self._gate.wait(30)
        self._real.start()  # type: ignore[attr-defined]
        self.started_pid: int = self._real.pid  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def test_a_natively_cancelled_start_waits_for_the_start_then_kills_the_child() -> None:
    # asyncio's Task.cancel() goes through anyio's shields: a start that gave up
    # at once let its caller close the fds the start was still sending (the
    # fork server died of it).  The start must be waited for, then undone.
    from anycore._workers._start import ProcessHandle

    ctx = _GatedContext()
    task = asyncio.create_task(
        ProcessHandle.start(ctx, time.sleep, (60,), name=None, daemon=True, group=True)
    )
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done, "the start was abandoned while its thread still ran"
    ctx.go.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    (process,) = ctx.started
    pid = process.started_pid  # type: ignore[attr-defined]
    end = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < end:
        await anyio.sleep(0.01)  # polling /proc until the killed child is reaped, bounded
    assert not Path(f"/proc/{pid}").exists(), "the child of the cancelled start is still there"
