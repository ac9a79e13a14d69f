"""Exit guarantees of anycore.Process: no orphans, no zombies, bounded drains.

Descendants are found from /proc (the process group a child leads); polling /proc
with a bounded deadline is the only waiting done on OS state.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from _support import alive
from anycore import PIPE, Process, TimeoutExpired, open_runtime, run_process

PY = sys.executable


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _group_members(pgid: int) -> set[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                found.add(int(entry))
    return found


def _zombie_children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and fields[1] == me and fields[0] == "Z":
                found.add(int(entry))
    return found


async def _until_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    """Poll /proc (bounded) until none of ``pids`` runs; return the survivors."""
    with anyio.move_on_after(timeout):
        while any(alive(p) for p in pids):
            await anyio.sleep(0.01)
    return {p for p in pids if alive(p)}


# A child that starts two grandchildren in its process group and reports them.
FAMILY = "sleep 1000 & a=$!; sleep 1000 & echo $a $!; wait"
# The same, but the whole family ignores SIGTERM (ignored dispositions are inherited).
STUBBORN = "trap '' TERM; " + FAMILY


async def _start_family(script: str, **kwargs: object) -> tuple[Process, set[int]]:
    proc = Process(["sh", "-c", script], stdout=PIPE, **kwargs)  # type: ignore[arg-type]
    await proc.start()
    assert proc.stdout is not None
    grandchildren = {int(x) for x in (await proc.stdout.readline()).split()}
    assert len(grandchildren) == 2
    assert _group_members(proc.pid) == grandchildren | {proc.pid}
    return proc, grandchildren


@pytest.mark.parametrize("script", [FAMILY, STUBBORN], ids=["plain", "ignores-sigterm"])
async def test_cancelled_scope_leaves_no_descendant(script: str) -> None:
    with anyio.CancelScope() as scope:
        proc, grandchildren = await _start_family(script, grace_period=0.3)
        async with proc:
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert proc.status is not None
    # SIGTERM first; SIGKILL only for a family that ignores it.
    assert proc.status.signal == (signal.SIGKILL if script == STUBBORN else signal.SIGTERM)
    assert await _until_gone(grandchildren | {proc.pid}) == set()
    assert _group_members(proc.pid) == set()


async def test_native_asyncio_timeout_leaves_no_descendant() -> None:
    proc, grandchildren = await _start_family(FAMILY)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2), proc:
            await proc.wait()
    assert await _until_gone(grandchildren | {proc.pid}) == set()


async def test_task_cancel_leaves_no_descendant() -> None:
    started = asyncio.Event()
    box: list[tuple[Process, set[int]]] = []

    async def owner() -> None:
        proc, grandchildren = await _start_family(STUBBORN, grace_period=0.5)
        box.append((proc, grandchildren))
        async with proc:
            started.set()
            await proc.wait()

    task = asyncio.ensure_future(owner())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    proc, grandchildren = box[0]
    assert await _until_gone(grandchildren | {proc.pid}) == set()


async def test_error_in_block_stops_the_group() -> None:
    proc, grandchildren = await _start_family(FAMILY)

    async def body() -> None:
        async with proc:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await body()
    assert await _until_gone(grandchildren | {proc.pid}) == set()


async def test_leftovers_of_a_finished_child_are_killed_at_close() -> None:
    async with Process(["sh", "-c", "sleep 1000 & echo $!"], stdout=PIPE) as proc:
        assert proc.stdout is not None
        grandchild = int(await proc.stdout.readline())
        assert await proc.wait() == 0
        assert alive(grandchild)
    assert await _until_gone({grandchild}) == set()


async def test_kill_group_false_spares_leftovers() -> None:
    async with Process(["sh", "-c", "sleep 1000 & echo $!"], stdout=PIPE, kill_group=False) as proc:
        assert proc.stdout is not None
        grandchild = int(await proc.stdout.readline())
        await proc.wait()
    try:
        assert alive(grandchild)
    finally:
        os.kill(grandchild, signal.SIGKILL)
    assert await _until_gone({grandchild}) == set()


async def test_grandchild_in_group_holding_pipe_cannot_hang() -> None:
    # The shell exits at once; `sleep` keeps stdout open.  communicate() waits a
    # bounded drain, kills the group, and returns what was written.
    with anyio.fail_after(10):
        result = await run_process(
            ["sh", "-c", "sleep 1000 & echo hi"], capture_output=True, drain_timeout=0.2
        )
    assert result.stdout == b"hi\n"
    assert result.returncode == 0


async def test_grandchild_in_other_session_holding_pipe_cannot_hang_timeout() -> None:
    # setsid takes the grandchild out of the group: nothing we may signal reaches it,
    # yet a timeout still returns promptly (pipes drained with a bound, then closed).
    script = "setsid sleep 30 & echo $!; sleep 1000"
    escaped = 0
    try:
        with anyio.fail_after(15), pytest.raises(TimeoutExpired) as info:
            await run_process(
                ["sh", "-c", script], capture_output=True, timeout=0.5,
                grace_period=0.2, drain_timeout=0.2,
            )  # fmt: skip
        out = info.value.output
        assert isinstance(out, bytes)
        escaped = int(out.split()[0])
    finally:
        if escaped:
            os.kill(escaped, signal.SIGKILL)


async def test_no_zombies_after_hundreds_of_children() -> None:
    limiter = anyio.CapacityLimiter(8)
    peak = 0
    running = 0

    async def one(i: int) -> None:
        nonlocal peak, running
        async with Process(["true"], limiter=limiter) as proc:
            running += 1
            peak = max(peak, running)
            assert limiter.borrowed_tokens <= 8
            if i % 2:
                await proc.wait()  # the other half is closed while possibly running
            running -= 1

    async with anyio.create_task_group() as tg:
        for i in range(300):
            tg.start_soon(one, i)
    assert 1 <= peak <= 8
    assert limiter.borrowed_tokens == 0
    assert _zombie_children() == set()


async def test_limiter_bounds_concurrent_processes() -> None:
    limiter = anyio.CapacityLimiter(2)
    first = Process(["sleep", "1000"], limiter=limiter)
    second = Process(["sleep", "1000"], limiter=limiter)
    third = Process(["true"], limiter=limiter)
    async with first, second:
        with anyio.move_on_after(0.2) as scope:
            await third.start()
        assert scope.cancelled_caught  # no token: it never spawned
        assert third.pid == -1
        assert limiter.borrowed_tokens == 2
    assert limiter.borrowed_tokens == 0


async def test_aclose_is_idempotent_and_concurrent_safe() -> None:
    proc = Process(["sleep", "1000"], grace_period=0.5)
    await proc.start()
    async with anyio.create_task_group() as tg:
        tg.start_soon(proc.aclose)
        tg.start_soon(proc.aclose)
    await proc.aclose()
    assert proc.returncode == -signal.SIGTERM
    proc.kill()  # after the reap: a no-op, never a stray signal


async def test_runtime_shutdown_stops_live_processes() -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('READY', flush=True)\n"
        "time.sleep(1000)"
    )
    async with open_runtime(handle_signals=False):
        proc = Process([PY, "-c", code], stdout=PIPE, grace_period=0.2)
        await proc.start()  # deliberately not closed by the body
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"READY\n"
    assert proc.status is not None
    assert proc.status.signal == signal.SIGKILL


async def test_register_false_leaves_the_process_to_its_owner() -> None:
    owned = Process(["sleep", "1000"], register=False, grace_period=0.5)
    try:
        async with open_runtime(handle_signals=False):
            registered = Process(["sleep", "1000"], grace_period=0.5)
            await registered.start()  # deliberately not closed by the body
            await owned.start()
        # The runtime's PROCESSES step stopped the registered process only.
        assert registered.returncode == -signal.SIGTERM
        assert owned.returncode is None
        assert _stat(owned.pid) is not None
    finally:
        await owned.aclose()
    assert owned.returncode == -signal.SIGTERM


def test_force_exit_hook_kills_process_groups(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from anycore import Process, open_runtime

        async def main():
            async with open_runtime(handle_signals=False) as rt:
                proc = Process(["sh", "-c", "sleep 1000 & echo $!; wait"], stdout=-1)
                await proc.start()
                grandchild = (await proc.stdout.readline()).strip().decode()
                print(proc.pid, grandchild, flush=True)
                rt.force_exit(3)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [PY, "-c", script], capture_output=True, timeout=30, check=False, cwd=tmp_path
    )
    assert done.returncode == 3, done.stderr
    pids = {int(x) for x in done.stdout.split()}
    assert len(pids) == 2
    deadline_left = 100
    while any(alive(p) for p in pids) and deadline_left:
        deadline_left -= 1
        os.sched_yield()
        import time

        time.sleep(0.02)  # polling OS state, bounded
    assert not any(alive(p) for p in pids)


async def test_thread_watcher_fallback_without_pidfd(monkeypatch: pytest.MonkeyPatch) -> None:
    import anycore._proc._spawn

    monkeypatch.setattr(anycore._proc._spawn, "_HAS_PIDFD", False)
    result = await run_process(["sh", "-c", "echo hi; exit 4"], capture_output=True)
    assert (result.returncode, result.stdout) == (4, b"hi\n")
    async with Process(["sleep", "1000"], grace_period=0.5) as proc:
        with pytest.raises(TimeoutExpired):
            await proc.wait(0.05)
    assert proc.returncode == -signal.SIGTERM
    assert _zombie_children() == set()
