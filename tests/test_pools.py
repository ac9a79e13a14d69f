"""WorkerPool over tasks, threads and processes."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from anycore._workers._carry import current_worker_id
from anycore._workers._pool_results import AsyncResult
from anycore._workers._pools import PoolStatistics, WorkerPool
from anycore.errors import (
    ChildProcessFailed,
    PoolClosed,
    QueueFull,
    RemoteError,
    RuntimeStateError,
    WorkerCrashed,
)
from test_child import assert_no_descendants, wait_for_file
from test_pools_workers import (
    NOT_CARRIED,
    REQUEST_ID,
    add,
    announce_and_sleep,
    async_double,
    context_values,
    exit_now,
    fail,
    fail_unpicklable,
    flush_to,
    init_fails,
    init_worker,
    pid_of,
    read_init,
    segfault,
    square,
)

BACKENDS = ["tasks", "threads", "processes"]
VAR: contextvars.ContextVar[str] = contextvars.ContextVar("test_pools.var", default="-")


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    yield
    assert_no_descendants()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_whole_api(backend: str) -> None:
    seen: list[Any] = []
    errors: list[BaseException] = []
    async with WorkerPool(backend, workers=2) as pool:
        assert await pool.apply(add, (2, 3)) == 5
        assert await pool.apply(add, (2,), {"b": 5}) == 7
        res = await pool.submit(add, 1, b=2)
        assert isinstance(res, AsyncResult)
        assert await res == 3
        assert res.ready()
        assert res.successful()
        res = await pool.apply_async(square, (4,), callback=seen.append)
        assert await res.get(timeout=30) == 16
        bad = await pool.apply_async(fail, ("nope",), error_callback=errors.append)
        assert await bad.wait(30)
        assert not bad.successful()
        with pytest.raises(ValueError, match="nope"):
            await bad.get()
        assert await pool.map(square, range(50)) == [x * x for x in range(50)]
        assert await pool.map(square, range(50), chunksize=7) == [x * x for x in range(50)]
        assert await pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert [x async for x in pool.imap(square, range(20), chunksize=3)] == [
            x * x for x in range(20)
        ]
        got = [x async for x in pool.imap_unordered(square, range(20))]
        assert sorted(got) == [x * x for x in range(20)]
        assert [x async for x in pool.istarmap(add, [(1, 1), (2, 2)])] == [2, 4]
        mres = await pool.map_async(square, range(5), callback=seen.append)
        assert await mres.get() == [0, 1, 4, 9, 16]
        sres = await pool.starmap_async(add, [(1, 1)])
        assert await sres == [2]
        stats = pool.statistics()
        assert isinstance(stats, PoolStatistics)
        assert stats.workers == 2
        assert stats.failed == 1
        assert stats.done > 10
        assert stats.running == stats.queued == 0
    assert seen == [16, [0, 1, 4, 9, 16]]
    assert isinstance(errors[0], ValueError)


async def test_tasks_backend_runs_coroutines_concurrently() -> None:
    gate = asyncio.Event()
    running = 0
    peak = 0

    async def job(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            gate.set()
        await gate.wait()
        running -= 1
        return x

    async with WorkerPool("tasks", workers=3) as pool:
        assert await pool.map(job, range(9)) == list(range(9))
        assert await pool.apply(async_double, (4,)) == 8
    assert peak == 3


@pytest.mark.parametrize("backend", ["threads", "processes"])
async def test_coroutine_function_in_threads_and_processes(backend: str) -> None:
    async with WorkerPool(backend, workers=1) as pool:
        assert await pool.apply(async_double, (5,)) == 10


async def test_remote_traceback_attached() -> None:
    async with WorkerPool("processes", workers=1) as pool:
        with pytest.raises(ValueError, match="deep") as info:
            await pool.apply(fail, ("deep",))
        cause = info.value.__cause__
        assert isinstance(cause, RemoteError)
        assert "in fail" in cause.remote_traceback
        assert any("raised in pool worker" in n for n in info.value.__notes__)
        assert "_pool_processes.py" not in cause.remote_traceback  # starts in user code
        with pytest.raises(RemoteError, match="Unpicklable"):
            await pool.apply(fail_unpicklable)


async def test_lambdas_and_closures_reach_processes() -> None:
    pytest.importorskip("cloudpickle")
    k = 3
    async with WorkerPool("processes", workers=1) as pool:
        assert await pool.map(lambda x: x * k, range(4)) == [0, 3, 6, 9]


# -- crash recovery ---------------------------------------------------------


async def _crash_and_recover(pool: WorkerPool, crash: Any) -> WorkerCrashed:
    others = [await pool.submit(square, i) for i in range(6)]
    with pytest.raises(WorkerCrashed) as info:
        await crash()
    assert [await r for r in others] == [i * i for i in range(6)]
    # the pool keeps working, with a replacement worker
    assert await pool.map(square, range(30)) == [x * x for x in range(30)]
    assert pool.statistics().crashed == 1
    return info.value


@pytest.mark.parametrize(
    ("fn", "args", "code"), [(exit_now, (3,), 3), (segfault, (), -signal.SIGSEGV)]
)
async def test_crash_fails_only_its_task(fn: Any, args: tuple[Any, ...], code: int) -> None:
    async with WorkerPool("processes", workers=2) as pool:
        err = await _crash_and_recover(pool, lambda: pool.apply(fn, args))
        assert err.exitcode == code
        assert err.pid is not None


async def test_crash_by_sigkill_from_outside(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    async with WorkerPool("processes", workers=2) as pool:

        async def crash() -> None:
            res = await pool.submit(announce_and_sleep, str(ready))
            pid = int(await wait_for_file(ready))
            os.kill(pid, signal.SIGKILL)
            await res

        err = await _crash_and_recover(pool, crash)
        assert err.exitcode == -signal.SIGKILL


async def test_jobs_queued_behind_a_crash_are_not_lost() -> None:
    async with WorkerPool("processes", workers=1) as pool:
        # one worker: everything queues behind the crashing job
        crash = await pool.submit(exit_now, 9)
        rest = [await pool.submit(square, i) for i in range(20)]
        with pytest.raises(WorkerCrashed):
            await crash
        assert [await r for r in rest] == [i * i for i in range(20)]


# -- backpressure -----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_endless_iterable_is_consumed_boundedly(backend: str) -> None:
    produced = 0

    def endless() -> Iterator[int]:
        nonlocal produced
        while True:
            produced += 1
            yield produced

    async with WorkerPool(backend, workers=2, max_inflight=4) as pool:
        it = pool.imap(square, endless(), chunksize=3)
        got = []
        async for value in it:
            got.append(value)
            # never more than the window (4 jobs x 3 items) ahead
            assert produced - len(got) <= 4 * 3
            if len(got) == 100:
                break
        await it.aclose()
    assert got == [x * x for x in range(1, 101)]


async def test_async_iterable_and_unordered_window() -> None:
    produced = 0

    async def source() -> AsyncIterator[int]:
        nonlocal produced
        for i in range(1000):
            produced += 1
            yield i

    async with WorkerPool("threads", workers=2, max_inflight=5) as pool:
        count = 0
        async with pool.imap_unordered(square, source()) as it:
            async for _ in it:
                count += 1
                assert produced - count <= 5
        assert count == 1000


async def test_submit_waits_for_room_and_nowait_raises() -> None:
    gate = asyncio.Event()

    async def blocked() -> None:
        await gate.wait()

    async with WorkerPool("tasks", workers=1, max_inflight=2) as pool:
        a = await pool.submit(blocked)
        b = pool.submit_nowait(blocked)
        with pytest.raises(QueueFull):
            pool.submit_nowait(blocked)
        third = asyncio.create_task(pool.submit(blocked))
        await asyncio.sleep(0)
        assert not third.done()
        assert pool.statistics().queued == 1
        gate.set()
        await a
        c = await third
        await b
        await c


# -- cancellation -----------------------------------------------------------


async def test_cancelling_a_process_task_kills_and_replaces_its_worker(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    async with WorkerPool("processes", workers=1) as pool:
        task = asyncio.create_task(pool.apply(announce_and_sleep, (str(ready),)))
        pid = int(await wait_for_file(ready))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await pool.apply(pid_of) != pid
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
        stats = pool.statistics()
        assert stats.crashed == 0
        assert stats.workers == 1


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


async def test_cancelling_a_job_queued_in_a_worker_skips_it(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    async with WorkerPool("processes", workers=1) as pool:
        # teach the pool that jobs are quick so it pipelines
        await pool.map(square, range(50), chunksize=1)
        first = await pool.submit(announce_and_sleep, str(ready), 0.5)
        second = await pool.submit(square, 3)
        await wait_for_file(ready)
        second.cancel()
        await first
        assert second.ready()
        with pytest.raises(asyncio.CancelledError):
            await second.get()
        assert pool.statistics().crashed == 0


@pytest.mark.parametrize("backend", BACKENDS)
async def test_cancelling_the_scope_stops_everything(backend: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    with anyio.CancelScope() as scope:
        async with WorkerPool(backend, workers=2) as pool:
            if backend == "tasks":
                res = await pool.submit(anyio.sleep_forever)
            else:
                res = await pool.submit(announce_and_sleep, str(ready), 2.0)
                await wait_for_file(ready)
            scope.cancel()
            await anyio.sleep_forever()
    assert res.ready()
    with pytest.raises(PoolClosed):
        await res.get()
    assert pool.statistics().workers == 0


async def test_map_failure_cancels_the_rest() -> None:
    async with WorkerPool("processes", workers=2) as pool:
        with pytest.raises(ValueError, match="x"):
            await pool.map(fail, ["x"] * 10, chunksize=1)
        assert await pool.apply(square, (2,)) == 4


# -- workers: initializer, max tasks, ids, context ----------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_initializer_runs_in_every_worker(backend: str) -> None:
    async with WorkerPool(backend, workers=2, initializer=init_worker, initargs=("x",)) as pool:
        values = await pool.map(read_init, range(8), chunksize=1)
    assert all("x" in v for v in values)


async def test_failing_initializer_breaks_the_pool() -> None:
    async with WorkerPool("processes", workers=1, initializer=init_fails) as pool:
        with pytest.raises(ChildProcessFailed, match="initializer"):
            await pool.apply(square, (1,))


@pytest.mark.parametrize("max_tasks", [None, 1])
async def test_process_workers_run_exit_flush_hooks(tmp_path: Path, max_tasks: int | None) -> None:
    flushed = tmp_path / "flushed"
    async with WorkerPool(
        "processes",
        workers=1,
        initializer=flush_to,
        initargs=(str(flushed),),
        max_tasks_per_child=max_tasks,
    ) as pool:
        assert await pool.apply(square, (2,)) == 4
        if max_tasks == 1:  # the retired worker flushed before it exited
            await wait_for_file(flushed)
    assert flushed.read_text() == "flushed"


async def test_max_tasks_per_child_replaces_workers() -> None:
    async with WorkerPool("processes", workers=1, max_tasks_per_child=2) as pool:
        pids = [await pool.apply(pid_of) for _ in range(6)]
        assert pool.statistics().crashed == 0
    assert len(set(pids)) == 3
    assert pids[0] == pids[1]
    assert pids[2] == pids[3]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_worker_id_and_contextvars_are_carried(backend: str) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(user="ada")
    token = REQUEST_ID.set("req-7")
    not_carried = NOT_CARRIED.set("local")
    try:
        async with WorkerPool(backend, workers=2, name="wp") as pool:
            values = await pool.apply(context_values)
            assert current_worker_id() is None
    finally:
        REQUEST_ID.reset(token)
        NOT_CARRIED.reset(not_carried)
        structlog.contextvars.clear_contextvars()
    assert values["request_id"] == "req-7"
    assert values["structlog"] == {"user": "ada"}
    assert values["worker_id"].startswith("wp-")
    # processes carry only structlog's and registered variables
    assert values["not_carried"] == ("-" if backend == "processes" else "local")


# -- lifecycle ----------------------------------------------------------------


async def test_close_join_terminate_semantics() -> None:
    pool = WorkerPool("threads", workers=1)
    with pytest.raises(RuntimeStateError):
        await pool.submit(square, 1)
    await pool.start()
    with pytest.raises(RuntimeStateError):
        await pool.join()
    res = await pool.submit(square, 3)
    pool.close()
    with pytest.raises(PoolClosed):
        await pool.submit(square, 1)
    await pool.join()
    assert await res == 9
    await pool.terminate()  # idempotent after join


async def test_terminate_fails_outstanding_results(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    async with WorkerPool("processes", workers=1) as pool:
        running = await pool.submit(announce_and_sleep, str(ready))
        queued = await pool.submit(square, 2)
        await wait_for_file(ready)
        await pool.terminate()
        for res in (running, queued):
            with pytest.raises(PoolClosed):
                await res.get()


async def test_normal_exit_finishes_submitted_work() -> None:
    async with WorkerPool("processes", workers=2) as pool:
        results = [await pool.submit(square, i) for i in range(10)]
    assert [r.successful() for r in results] == [True] * 10
    assert [await r for r in results] == [i * i for i in range(10)]


async def test_get_timeout_does_not_cancel(tmp_path: Path) -> None:
    async with WorkerPool("processes", workers=1) as pool:
        res = await pool.submit(announce_and_sleep, str(tmp_path / "r"), 0.3)
        with pytest.raises(TimeoutError):
            await res.get(timeout=0.01)
        assert await res.get() is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="backend"):
        WorkerPool("gpu")
    with pytest.raises(ValueError, match="workers"):
        WorkerPool("threads", workers=0)
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        WorkerPool("processes", max_tasks_per_child=0)


async def test_runtime_shutdown_joins_pools_and_stops_children(tmp_path: Path) -> None:
    from anycore._core._runtime import open_runtime
    from anycore._workers._child import ChildProcess

    ready = tmp_path / "ready"
    async with open_runtime(handle_signals=False):
        pool = WorkerPool("processes", workers=1)
        await pool.start()
        res = await pool.submit(square, 3)
        child: ChildProcess[None] = ChildProcess(announce_and_sleep, str(ready))
        await child.start()
        await wait_for_file(ready)
    assert await res == 9
    assert pool.statistics().workers == 0
    assert child.exitcode == -signal.SIGTERM


# -- messages over max_message_size (issue 19) --------------------------------------


def big_result(n: int) -> bytes:
    return b"x" * n


async def test_oversized_result_is_refused_in_the_worker_which_lives_on() -> None:
    from anycore.errors import FrameTooLarge, PoolMessageTooLarge

    async with WorkerPool("processes", workers=1, max_message_size=100_000) as pool:
        before = await pool.apply(pid_of)
        with pytest.raises(PoolMessageTooLarge) as info:
            await pool.apply(big_result, (200_000,))
        err = info.value
        assert isinstance(err, FrameTooLarge)
        assert err.what == "result"
        assert err.limit == 100_000
        assert err.size > 200_000
        assert "max_message_size of 100000 bytes" in str(err)
        with pytest.raises(PoolMessageTooLarge) as info:
            await pool.apply(len, (b"y" * 200_000,))
        assert info.value.what == "arguments"
        assert await pool.apply(pid_of) == before  # the same worker, still serving
        assert await pool.apply(big_result, (10,)) == b"x" * 10
        assert pool.statistics().crashed == 0


# -- the main-module guard (issue 11) ----------------------------------------------

_NO_GUARD = """\
import asyncio
import anycore

def square(x):
    return x * x

async def main():
    async with anycore.WorkerPool("processes", workers=2) as pool:
        print(await pool.map(square, range(5)))

asyncio.run(main())
"""


@pytest.mark.parametrize("context", ["forkserver", "spawn"])
def test_script_without_main_guard_fails_fast_naming_the_guard(
    tmp_path: Path, context: str
) -> None:
    import subprocess
    import sys
    import time

    script = tmp_path / "noguard.py"
    script.write_text(_NO_GUARD.replace("workers=2", f'workers=2, context="{context}"'))
    framework = Path(__file__).resolve().parent.parent / "framework"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(framework)),
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert time.monotonic() - started < 30
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("anycore.errors.ChildProcessFailed: the script")
    assert 'if __name__ == "__main__":' in last


# -- a failing task's traceback, once, with the user's file (issue 11) ----------------

_FAILING = """\
import asyncio
import anycore

def boom(x):
    raise ValueError(f"bad {x}")

async def main():
    async with anycore.WorkerPool("processes", workers=1) as pool:
        await pool.apply(boom, (3,))

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_remote_traceback_is_printed_once_with_the_users_file_and_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "failing.py"
    script.write_text(_FAILING)
    framework = Path(__file__).resolve().parent.parent / "framework"
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(framework)),
        cwd=tmp_path,
    )
    assert done.returncode == 1
    err = done.stderr
    assert f'File "{script}", line 5, in boom' in err
    assert err.count(", in boom") == 1  # printed once
    assert 'raise ValueError(f"bad {x}")' in err  # with the line's source
    assert "<dynamic-code>" not in err
    assert "_pool_processes.py" not in err
    assert err.rstrip().endswith("its traceback is the cause above")


# -- progress of long maps (issue 11) -----------------------------------------------


@pytest.mark.parametrize("backend", ["threads", "processes"])
async def test_map_progress_callback_counts_every_item(backend: str) -> None:
    calls: list[tuple[int, int | None]] = []
    async with WorkerPool(backend, workers=2) as pool:
        out = await pool.map(
            square, range(40), chunksize=3, progress=lambda d, t: calls.append((d, t))
        )
        assert out == [x * x for x in range(40)]
        assert calls[0] == (0, 40)
        assert calls[-1] == (40, 40)
        done = [d for d, _ in calls]
        assert done == sorted(done)
        assert len(calls) == 1 + 14  # one call per finished chunk (40 / 3 -> 14)
        # A lazy map over an iterable without a length: total is None.
        seen: list[tuple[int, int | None]] = []
        results = [
            r
            async for r in pool.imap(
                square, iter(range(5)), progress=lambda d, t: seen.append((d, t))
            )
        ]
        assert results == [0, 1, 4, 9, 16]
        assert seen[0] == (0, None)
        assert seen[-1] == (5, None)


async def test_progress_true_draws_a_tqdm_bar_or_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys
    import types

    async with WorkerPool("tasks", workers=2) as pool:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm is not installed
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
        with pytest.raises(ImportError, match=r"pip install anycore\[progress\]"):
            await pool.map(square, range(3), progress=True)
        with pytest.raises(TypeError, match="progress must be True or a callable"):
            await pool.map(square, range(3), progress="yes")  # type: ignore[arg-type]

        bars: list[Any] = []

        class FakeBar:  # tqdm's interface as anycore uses it
            def __init__(self, total: int | None, unit: str) -> None:
                self.total, self.n, self.closed = total, 0, False
                bars.append(self)

            def update(self, n: int) -> None:
                self.n += n

            def close(self) -> None:
                self.closed = True

        fake = types.ModuleType("tqdm.auto")
        fake.tqdm = FakeBar  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "tqdm.auto", fake)
        assert await pool.map(square, range(7), progress=True) == [x * x for x in range(7)]
        assert [(b.total, b.n, b.closed) for b in bars] == [(7, 7, True)]


# -- on trio: a clear error at the call (issue 11) ------------------------------------


def test_on_trio_pools_and_children_say_what_to_use_instead() -> None:
    from anycore import ChildProcess, run_process
    from anycore.errors import BackendNotSupported

    async def main() -> list[str]:
        messages = []
        for start in (
            lambda: WorkerPool("processes", workers=1).start(),
            lambda: WorkerPool("threads", workers=1).start(),
            lambda: ChildProcess(square, 3).start(),
            lambda: run_process(["true"]),
        ):
            with pytest.raises(BackendNotSupported) as info:
                await start()
            messages.append(str(info.value))
        return messages

    pool_p, pool_t, child, proc = anyio.run(main, backend="trio")
    assert pool_p.startswith("WorkerPool('processes') needs asyncio (or uvloop), not trio")
    assert "anyio.to_process.run_sync()" in pool_p
    assert pool_t.startswith("WorkerPool('threads') needs asyncio")
    assert child.startswith("ChildProcess needs asyncio")
    assert "anyio.to_process.run_sync(fn, *args)" in child
    assert "anyio.run_process()" in proc
