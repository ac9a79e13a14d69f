"""The "tasks" pool backend: jobs as tasks on this loop, N at a time.

A job runs as a task created in the caller's context copy (so contextvars
behave as if the caller ran it), holding one of N worker slots whose id is
the worker id.  Coroutine functions are awaited; a sync function runs inline
(it blocks the loop while it runs - use the threads backend for those).

Rejected: N long-lived worker tasks pulling from a queue (a job would then run
in the worker's context, not the caller's, and cancelling one job would need
a scope per job anyway).
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from typing import Any

from .._core._state import WORKER_ID
from ._pool_contract import CALL, FINISHED, MAP, RUNNING, Backend, Job, PoolConfig, copy_context


class TaskBackend(Backend):
    """Run jobs as asyncio tasks, at most ``workers`` at a time."""

    auto_chunks = False

    def __init__(self) -> None:
        self._pending: deque[Job] = deque()
        self._free: list[str] = []
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers = 0
        self._closing = False

    async def start(self, config: PoolConfig) -> None:
        self._loop = asyncio.get_running_loop()
        self._workers = config.workers
        self._free = [f"{config.name}-{n}" for n in range(config.workers, 0, -1)]
        if config.initializer is not None:
            for wid in reversed(self._free):
                token = WORKER_ID.set(wid)
                try:
                    value = config.initializer(*config.initargs)
                    if inspect.isawaitable(value):
                        await value
                finally:
                    WORKER_ID.reset(token)

    def capture_context(self) -> Any:
        return copy_context()

    def dispatch(self, job: Job) -> None:
        if self._free and not self._closing:
            self._run(job)
        else:
            self._pending.append(job)

    def _run(self, job: Job) -> None:
        assert self._loop is not None
        wid = self._free.pop()
        job.state = RUNNING
        job.slot = wid
        task = self._loop.create_task(self._body(job, wid), context=job.context)
        self._tasks[job.id] = task

    async def _body(self, job: Job, wid: str) -> None:
        WORKER_ID.set(wid)
        try:
            fn = job.fn
            if job.kind == CALL:
                value = fn(*job.args, **job.kwargs) if job.kwargs else fn(*job.args)
                if inspect.isawaitable(value):
                    value = await value
            else:
                value = []
                for item in job.args:
                    r = fn(item) if job.kind == MAP else fn(*item)
                    if inspect.isawaitable(r):
                        r = await r
                    value.append(r)
        except asyncio.CancelledError:
            job.finish(False, asyncio.CancelledError())
            raise
        except BaseException as exc:
            job.finish(False, exc)
        else:
            job.finish(True, value)
        finally:
            self._tasks.pop(job.id, None)
            self._free.append(wid)
            self._next()

    def _next(self) -> None:
        while self._pending and self._free and not self._closing:
            job = self._pending.popleft()
            if job.state != FINISHED:
                self._run(job)

    def cancel(self, job: Job) -> None:
        task = self._tasks.get(job.id)
        if task is not None:
            task.cancel()
        # a queued job is skipped when it comes up (its state is FINISHED)

    def counts(self) -> tuple[int, int, int]:
        queued = sum(1 for j in self._pending if j.state != FINISHED)
        return self._workers, queued, len(self._tasks)

    async def shutdown(self, graceful: bool) -> None:
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:
                pass
        for job in self._pending:
            job.finish(False, asyncio.CancelledError())
        self._pending.clear()
        self._workers = 0
