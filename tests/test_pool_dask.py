"""WorkerPool("dask"): the same API on a Dask distributed cluster.

Most tests share one cluster per module, started the way a user would run
one: ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (so
these tests are also the "existing scheduler" tests).  The pool-owned
LocalCluster has tests of its own (start, worker loss, no process left).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import anycore
from anycore.errors import ChildProcessFailed, DaskWorkerLost, PoolClosed, QueueFull
from test_child_logging import _Collect  # a handler that waits for a message

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

import _dask_tasks as tasks  # noqa: E402 - after the skip
from _support import wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORKER_OPTIONS = ["--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"]
WORKER_OPTIONS += ["--memory-limit", "512MiB", "--local-directory"]  # then the directory
DASK = shutil.which("dask", path=os.path.dirname(sys.executable)) or "dask"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An externally started cluster: a scheduler and two workers (nannies)."""
    tmp = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{_free_port()}"
    paths = [str(ROOT / "framework"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    log = (tmp / "cluster.log").open("wb")
    port = address.rsplit(":", 1)[1]
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
            env=env,
            stdout=log,
            stderr=log,
        )
    ]
    try:
        for n in range(2):
            procs.append(
                subprocess.Popen(
                    [DASK, "worker", address, f"--name=w{n}", *WORKER_OPTIONS, str(tmp / f"{n}")],
                    env=env,
                    stdout=log,
                    stderr=log,
                )
            )
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        _stop(procs[1:])
        _stop(procs[:1])
        log.close()


def _pool(address: str, **kwargs: Any) -> anycore.WorkerPool:
    kwargs.setdefault("workers", 2)
    return anycore.WorkerPool("dask", address=address, **kwargs)


async def _everything(pool: anycore.WorkerPool) -> dict[str, Any]:
    """Every WorkerPool call once; what each returned (or raised)."""
    out: dict[str, Any] = {}
    out["submit"] = await (await pool.submit(tasks.add, 1, 2, c=3))
    out["submit_nowait"] = await pool.submit_nowait(tasks.square, 7)
    out["apply"] = await pool.apply(tasks.add, (2, 3), {"c": 4})
    out["coroutine function"] = await pool.apply(tasks.async_double, (21,))
    got: list[Any] = []
    ok = await pool.apply_async(tasks.square, (9,), callback=got.append)
    bad = await pool.apply_async(tasks.fail, (1,), error_callback=got.append)
    await ok.wait(30)
    await bad.wait(30)
    out["apply_async"] = (await ok.get(), ok.successful(), bad.successful())
    out["callbacks"] = sorted(repr(v) for v in got)
    out["map"] = await pool.map(tasks.square, range(50))
    out["map chunked"] = await pool.map(tasks.square, range(50), chunksize=7)
    out["starmap"] = await pool.starmap(tasks.add, [(i, i) for i in range(20)])
    mapped = await pool.map_async(tasks.square, range(10), callback=got.append)
    out["map_async"] = await mapped.get(30)
    starred = await pool.starmap_async(tasks.add, [(1, 2), (3, 4)])
    out["starmap_async"] = await starred
    out["imap"] = [r async for r in pool.imap(tasks.square, range(30), chunksize=4)]
    out["imap_unordered"] = sorted([r async for r in pool.imap_unordered(tasks.square, range(30))])
    out["istarmap"] = [r async for r in pool.istarmap(tasks.add, [(i, 1) for i in range(10)])]

    async def agen() -> Any:
        for i in range(5):
            yield i

    out["imap async iterable"] = [r async for r in pool.imap(tasks.square, agen())]
    with pytest.raises(ValueError) as caught:
        await pool.map(tasks.fail, range(3))
    out["map error"] = str(caught.value)
    with pytest.raises(ValueError) as caught:
        await pool.apply(tasks.fail, (5,))
    out["apply error"] = (type(caught.value).__name__, str(caught.value))
    out["scatter"] = await pool.apply(tasks.size_of, (await pool.scatter(b"x" * 1000), 1))
    stats = pool.statistics()
    # (workers and running are not compared: a process worker stopped by the
    # cancelled rest of "map error" may still be being replaced)
    out["statistics"] = (stats.queued, stats.max_inflight)
    return out


@pytest.mark.parametrize(
    "where", ["existing scheduler", pytest.param("own LocalCluster", marks=pytest.mark.slow)]
)
async def test_every_call_gives_what_the_processes_backend_gives(
    where: str, scheduler: str
) -> None:
    async with anycore.WorkerPool("processes", workers=2) as pool:
        expected = await _everything(pool)
    if where == "own LocalCluster":
        dask_pool = anycore.WorkerPool("dask", workers=2)
    else:
        dask_pool = _pool(scheduler)
    async with dask_pool as pool:
        got = await _everything(pool)
        assert pool.backend_name == "dask"
        stats = pool.statistics()
        assert stats.workers == 2
        assert stats.running == 0
    assert got == expected
    assert stats.failed >= 2
    assert stats.done > 10


async def test_bounded_inflight(scheduler: str, tmp_path: Path) -> None:
    release = tmp_path / "release"
    async with _pool(scheduler, max_inflight=2) as pool:
        try:
            first = pool.submit_nowait(tasks.block, str(tmp_path / "a"), str(release))
            second = pool.submit_nowait(tasks.block, str(tmp_path / "b"), str(release))
            with pytest.raises(QueueFull):
                pool.submit_nowait(tasks.square, 1)
            third = asyncio.ensure_future(pool.submit(tasks.square, 3))
            await asyncio.sleep(0)  # let it reach the admission wait
            assert not third.done()
            assert pool.statistics().running == 2
        finally:
            release.touch()
        assert [await first, await second] == ["released", "released"]
        assert await (await asyncio.wait_for(third, 30)) == 9


async def _wait_path(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.02)
    return path.read_text()


async def test_cancel_a_job_and_a_whole_map(scheduler: str, tmp_path: Path) -> None:
    release = tmp_path / "release"
    async with _pool(scheduler) as pool:
        try:
            running = await pool.submit(tasks.block, str(tmp_path / "s1"), str(release))
            await _wait_path(tmp_path / "s1")
            assert running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running.get(10)
            # a map of blocking jobs, cancelled as a whole
            args = [(str(tmp_path / f"m{i}"), str(release)) for i in range(6)]
            whole = await pool.starmap_async(tasks.block, args, chunksize=1)
            # (one worker may still be busy with the cancelled job: it runs
            # on, as a thread cannot be interrupted, until released below)
            await wait_until(lambda: any(tmp_path.glob("m*")), 30)
            assert pool.statistics().running > 0
            whole.cancel()
            with pytest.raises(asyncio.CancelledError):
                await whole.get(10)
            # the map's jobs are cancelled as its task unwinds
            await wait_until(lambda: pool.statistics().running == 0)
        finally:
            release.touch()
        # the pool goes on
        assert await pool.map(tasks.square, range(5)) == [0, 1, 4, 9, 16]
        # and cancelling the awaiting task cancels its job
        waiter = asyncio.ensure_future(
            pool.apply(tasks.block, (str(tmp_path / "s2"), str(tmp_path / "never")))
        )
        await _wait_path(tmp_path / "s2")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await wait_until(lambda: pool.statistics().running == 0)
        (tmp_path / "never").touch()


@pytest.mark.slow
async def test_a_worker_killed_mid_task_is_retried(scheduler: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    release = tmp_path / "release"
    async with _pool(scheduler) as pool:
        result = await pool.submit(tasks.killed_once, str(marker), str(release))
        try:
            pid = int(await _wait_path(marker))
            os.kill(pid, signal.SIGKILL)
            assert await result.get(60) == f"retried after {pid} died"
        finally:
            release.touch()
        assert await pool.map(tasks.square, range(4)) == [0, 1, 4, 9]


async def test_worker_id_and_initializer(scheduler: str) -> None:
    async with _pool(scheduler, name="dk", initializer=tasks.remember, initargs=("x",)) as pool:
        pid, wid = await pool.apply(tasks.where)
        assert wid is not None
        assert wid.startswith("dk-")
        assert pid != os.getpid()
        done = await pool.apply(tasks.initialized)
        assert any(entry.startswith("x:dk-") for entry in done), done


async def test_worker_logs_reach_the_parent_with_worker_id(scheduler: str) -> None:
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        async with _pool(scheduler, name="logs") as pool:
            pid = await pool.apply(tasks.log_warning, ("hello from dask",))
            record = await asyncio.to_thread(handler.wait_for, "hello from dask")
    finally:
        root.removeHandler(handler)
    assert record.name == "test.dask"
    assert record.levelno == logging.WARNING
    assert record.process == pid
    assert str(getattr(record, "worker_id", "")).startswith("logs-")


async def test_scatter_sends_once_and_local_backends_pass_through(scheduler: str) -> None:
    data = os.urandom(1 << 20)
    async with _pool(scheduler) as pool:
        ref = await pool.scatter(data)
        assert ref is not data
        sizes = await pool.starmap(tasks.size_of, [(ref, i) for i in range(8)], chunksize=1)
        assert sizes == [len(data) + i for i in range(8)]
        # collections travel whole (in a box the task opens), quickly
        started = time.monotonic()
        numbers = await pool.scatter(list(range(200_000)))
        table = await pool.scatter({"a": 1})
        assert time.monotonic() - started < 10
        assert await pool.apply(len, (numbers,)) == 200_000
        assert await pool.apply(sorted, (table,), {"reverse": True}) == ["a"]
        assert await pool.map(len, [numbers, table]) == [200_000, 1]
        assert await pool.apply(tasks.add, (1,), {"b": 2, "c": 3}) == 6
    async with anycore.WorkerPool("threads", workers=1) as local:
        assert await local.scatter(data) is data
    pool = _pool(scheduler)
    async with pool:
        pass
    with pytest.raises(PoolClosed):
        await pool.scatter(data)


async def test_an_existing_cluster_is_left_running(scheduler: str) -> None:
    for _ in range(2):
        async with _pool(scheduler) as pool:
            assert await pool.apply(tasks.square, (4,)) == 16
    async with distributed.Client(scheduler, asynchronous=True, timeout=30) as client:
        info = await client.scheduler.identity(n_workers=-1)
        assert len(info["workers"]) == 2
        plugins = await client.run(
            lambda dask_worker: sorted(dask_worker.plugins),
        )
        for names in plugins.values():
            assert not [n for n in names if n.startswith("anycore-")], names


async def test_unreachable_scheduler_is_a_clear_error() -> None:
    pool = anycore.WorkerPool("dask", address=f"tcp://127.0.0.1:{_free_port()}", connect_timeout=1)
    with pytest.raises(OSError, match=r"127\.0\.0\.1"):
        async with pool:
            pass


def test_options() -> None:
    with pytest.raises(TypeError, match="address"):
        anycore.WorkerPool("threads", address="tcp://127.0.0.1:1")
    with pytest.raises(TypeError):
        anycore.WorkerPool("dask", address=8786)
    with pytest.raises(ValueError, match="allowed_failures"):
        anycore.WorkerPool("dask", address="tcp://127.0.0.1:1", allowed_failures=1)
    with pytest.raises(TypeError, match="nope"):
        anycore.WorkerPool("dask", nope=1)


async def test_max_tasks_per_child_is_refused() -> None:
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        async with anycore.WorkerPool("dask", workers=1, max_tasks_per_child=3):
            pass


def test_without_distributed_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    monkeypatch.delitem(sys.modules, "anycore._workers._pool_dask", raising=False)
    with pytest.raises(ImportError, match=r"anycore\[dask\]"):
        anycore.WorkerPool("dask")


def _our_processes() -> set[int]:
    """This process's descendants, but multiprocessing's per-interpreter
    helpers (resource tracker, forkserver), which live until exit."""
    found = set()
    for p in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(p.cmdline())
        except psutil.ZombieProcess:
            cmdline = ""  # exited, not reaped: a leak as much as a live one
        except psutil.Error:
            continue
        if "multiprocessing.resource_tracker" in cmdline or "multiprocessing.forkserver" in cmdline:
            continue
        found.add(p.pid)
    return found


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_own_local_cluster_worker_loss_and_nothing_left_behind() -> None:
    before = _our_processes()
    scratch = Path(tempfile.gettempdir())
    dirs_before = set(scratch.glob("anycore-dask-*"))
    async with anycore.WorkerPool("dask", workers=2, allowed_failures=0) as pool:
        assert pool.statistics().workers == 2
        pids = {pid for pid, _ in await pool.map(lambda _: tasks.where(), range(8))}
        assert pids
        assert pids <= _our_processes() - before
        with pytest.raises(DaskWorkerLost) as caught:
            await pool.apply(tasks.kill_my_worker)
        assert isinstance(caught.value, ChildProcessFailed)
        assert "KilledWorker" in repr(caught.value.__cause__)
        assert pool.statistics().crashed == 1
        # the nanny replaced the worker; the pool goes on
        assert await pool.map(tasks.square, range(6)) == [0, 1, 4, 9, 16, 25]
        workers = _our_processes() - before
    assert workers
    left = [p for p in workers if psutil.pid_exists(p)]
    assert not left, left
    assert _our_processes() - before == set()
    assert set(scratch.glob("anycore-dask-*")) == dirs_before  # its scratch space is gone


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_scale_out_example_agrees_on_every_backend(scheduler: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(anycore.__file__).parent.parent)}
    proc = subprocess.run(
        [sys.executable, "examples/scale_out.py", "--address", scheduler],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    for label in ("tasks", "threads", "processes", "dask LocalCluster", f"dask at {scheduler}"):
        assert any(line.startswith(label) and "primes=6057" in line for line in lines), lines
    assert lines[-1] == "all 5 runs agree"


async def test_a_failing_initializer_fails_the_start_clearly(scheduler: str) -> None:
    with pytest.raises(ChildProcessFailed, match="initializer failed"):
        async with _pool(scheduler, initializer=tasks.fail, initargs=(3,)):
            pass
    # nothing of it stays on the shared cluster; the next pool works
    async with _pool(scheduler) as pool:
        assert await pool.apply(tasks.square, (5,)) == 25


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_cancelled_while_starting_its_cluster_leaves_nothing() -> None:
    before = _our_processes()
    pool = anycore.WorkerPool("dask", workers=2)
    starting = asyncio.ensure_future(pool.start())
    # cancel once a worker process exists: in the middle of the start
    await wait_until(lambda: bool(_our_processes() - before) or starting.done(), 60)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    await wait_until(lambda: not _our_processes() - before, 30)
    with pytest.raises(PoolClosed):
        await pool.apply(tasks.square, (1,))


async def test_the_public_backend_contract_is_enough_for_a_new_engine() -> None:
    from anycore._workers._pool_dask import DaskBackend
    from anycore.abc import CALL, Job, PoolBackend, PoolConfig, run_job_body

    assert issubclass(DaskBackend, PoolBackend)
    seen: list[int] = []

    class Inline(PoolBackend):
        async def start(self, config: PoolConfig) -> None:
            self.workers = config.workers

        def capture_context(self) -> None:
            return None

        def dispatch(self, job: Job) -> None:
            seen.append(job.kind)
            try:
                job.finish(True, run_job_body(job.kind, job.fn, job.args, job.kwargs))
            except Exception as exc:
                job.finish(False, exc)

        def cancel(self, job: Job) -> None:
            pass

        def counts(self) -> tuple[int, int, int]:
            return self.workers, 0, 0

        async def shutdown(self, graceful: bool) -> None:
            pass

    async with anycore.WorkerPool(Inline(), workers=3) as pool:
        assert await pool.map(abs, [-1, -2, 3]) == [1, 2, 3]
        assert await pool.apply(tasks.add, (1, 2), {"c": 3}) == 6
        with pytest.raises(ValueError, match="bad 1"):
            await pool.apply(tasks.fail, (1,))
        assert await pool.scatter(b"big") == b"big"  # the default: the object itself
        assert pool.statistics().workers == 3
    assert CALL in seen
