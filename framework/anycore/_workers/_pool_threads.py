"""The "threads" pool backend: N threads pulling jobs from a SimpleQueue.

Each job runs in a copy of its caller's context (``Context.run``), so every
contextvar - structlog's bound context above all - is what the caller had;
the worker id is set inside that copy.  Results go back to the loop in
batches: a thread appends to a list under a lock and schedules one
``call_soon_threadsafe`` per batch, not one per job.

Threads cannot be killed: cancelling a running job only drops its result,
and terminate() waits *grace* seconds for running jobs before abandoning the
(daemon) threads with a warning.  Rejected: concurrent.futures
ThreadPoolExecutor (a Future and a loop callback per job, and no worker ids).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any

from .._core._state import WORKER_ID
from ._pool_contract import (
    FINISHED,
    RUNNING,
    Backend,
    Job,
    PoolConfig,
    copy_context,
    run_job_body,
)

log = logging.getLogger("anycore.pools")


def _run(job: Job, wid: str) -> Any:
    WORKER_ID.set(wid)
    return run_job_body(job.kind, job.fn, job.args, job.kwargs)


class ThreadBackend(Backend):
    """Run jobs in a fixed set of daemon threads."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._results: list[tuple[Job, bool, Any]] = []
        self._scheduled = False
        self._threads: list[threading.Thread] = []
        self._alive = 0
        self._running = 0
        self._queued = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._all_exited: asyncio.Event | None = None
        self._config: PoolConfig | None = None

    async def start(self, config: PoolConfig) -> None:
        self._loop = asyncio.get_running_loop()
        self._all_exited = asyncio.Event()
        self._config = config
        for n in range(1, config.workers + 1):
            wid = f"{config.name}-{n}"
            t = threading.Thread(target=self._main, args=(wid,), name=wid, daemon=True)
            self._threads.append(t)
            self._alive += 1
            t.start()

    def capture_context(self) -> Any:
        return copy_context()

    def _main(self, wid: str) -> None:
        config = self._config
        assert config is not None
        try:
            if config.initializer is not None:
                WORKER_ID.set(wid)
                try:
                    config.initializer(*config.initargs)
                except BaseException:
                    log.exception("initializer of %s failed", wid)
            get = self._q.get
            while True:
                job = get()
                if job is None:
                    break
                with self._lock:
                    self._queued -= 1
                    if job.state == FINISHED:
                        continue
                    job.state = RUNNING
                    self._running += 1
                try:
                    value = job.context.run(_run, job, wid)
                    ok = True
                except BaseException as exc:
                    value, ok = exc, False
                self._post(job, ok, value)
        finally:
            self._post_exit()

    def _post(self, job: Job, ok: bool, value: Any) -> None:
        with self._lock:
            self._running -= 1
            self._results.append((job, ok, value))
            if self._scheduled:
                return
            self._scheduled = True
        self._call_soon(self._deliver)

    def _call_soon(self, fn: Any) -> None:
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            pass

    def _post_exit(self) -> None:
        self._call_soon(self._thread_exited)

    def _thread_exited(self) -> None:
        self._alive -= 1
        if self._alive == 0 and self._all_exited is not None:
            self._all_exited.set()

    def _deliver(self) -> None:
        with self._lock:
            results, self._results = self._results, []
            self._scheduled = False
        for job, ok, value in results:
            job.finish(ok, value)

    def dispatch(self, job: Job) -> None:
        with self._lock:
            self._queued += 1
        self._q.put(job)

    def cancel(self, job: Job) -> None:
        # Queued: skipped when a thread takes it.  Running: its result is
        # dropped (threads cannot be interrupted).
        pass

    def counts(self) -> tuple[int, int, int]:
        with self._lock:
            return self._alive, max(0, self._queued), self._running

    async def shutdown(self, graceful: bool) -> None:
        for _ in self._threads:
            self._q.put(None)
        if self._all_exited is None or not self._threads:
            return
        timeout = None if graceful else (self._config.grace if self._config else 2.0)
        try:
            await asyncio.wait_for(self._all_exited.wait(), timeout)
        except TimeoutError:
            log.warning(
                "pool threads still running after %s s; abandoning them (daemon threads)",
                timeout,
            )
        self._deliver()
