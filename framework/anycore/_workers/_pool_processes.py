"""The "processes" pool backend: long-lived workers on duplex channels.

Each worker is a child process (``_start.ProcessHandle``) holding one end of
a socketpair; the parent end is a ``_wire.Channel`` on the loop.  Frames are
a 9-byte header (kind, job id) and a pickle body, so a body that fails to
unpickle still names its job.

Scheduling: the parent sends each worker up to *depth* jobs ahead (a
pipeline, so tiny tasks do not pay a round trip each).  Depth adapts to the
measured service time: about 2 ms of work per worker is queued ahead, between
1 and 32 jobs, so 10 ms jobs go one at a time (no imbalance at the end of a
map) and 10 us jobs are pipelined.  A worker runs its jobs in order, so the
oldest unanswered job is the only one that can be running:

* crash (exit without being asked: os._exit, SIGKILL, segfault): what the
  worker wrote before dying is read first (``Channel.drain_now``); then the
  oldest unanswered job fails with WorkerCrashed(pid, exitcode) and the jobs
  behind it, which never started, go back to the front of the queue; a new
  worker replaces the dead one;
* cancelling the running job stops its worker (SIGTERM so its flush hooks
  run, SIGKILL after *grace*) and replaces it; cancelling a job still queued
  in a worker sends a CANCEL frame, which the worker reads before it starts
  any job, and answers SKIPPED;
* max_tasks_per_child: after that many jobs the parent stops sending, closes
  the channel once the answers are in, and the worker exits after running
  its exit-flush hooks; a replacement is started at once.

Workers start in their own process group with SIGTERM turned into an
exception (so ``finally`` blocks and the exit-flush hooks run); whatever is
left in the group when a worker exits is SIGKILLed, and workers die with
the parent (``die_with_parent``: the spawn guard and PR_SET_PDEATHSIG).  A
result or arguments over ``max_message_size`` are refused before sending
(PoolMessageTooLarge in the caller; the worker lives on).  A worker that
finds itself importing a main script without the ``__main__`` guard exits
and the pool fails at once, naming the guard.  Three
workers in a row dying before they report ready (or an initializer that
raises) break the pool: queued and later jobs fail with ChildProcessFailed,
rather than respawning forever as multiprocessing.Pool does.

Rejected: one shared task queue read by all workers (multiprocessing.Pool's
design: a dead worker's task is lost without trace, and a reader killed while
holding the queue's lock wedges the pool).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import pickle
import socket
import struct
import time
from collections import deque
from typing import Any

from .._core._state import WORKER_ID
from ..errors import ChildProcessFailed, PoolMessageTooLarge, WorkerCrashed
from ._carry import Snapshot, context_snapshot, picklable_snapshot, restore_snapshot
from ._pool_contract import FINISHED, RUNNING, Backend, Job, PoolConfig, run_job_body
from ._start import (
    NoMainGuard,
    ProcessHandle,
    _Terminated,
    child_prologue,
    default_context,
    log_forwarding_config,
    main_without_guard,
    run_child_body,
)
from ._wire import Channel, FrameSocket, dumps, dumps_callable, exception_payload, rebuild_exception

log = logging.getLogger("anycore.pools")

_HDR = struct.Struct("!BQ")
# parent -> worker
_JOB, _CANCEL = 1, 2
# worker -> parent
_READY, _INIT_FAILED, _OK, _ERR, _SKIPPED = 10, 11, 12, 13, 14

_TARGET_QUEUE_SECONDS = 0.002
_MAX_DEPTH = 32
_FN_CACHE = 64


# -- worker side ----------------------------------------------------------------


def _worker_main(
    sock: socket.socket, boot: bytes, log_forwarding: dict[str, Any] | None = None
) -> None:
    """Body of a pool worker process."""
    child_prologue(True, log_forwarding)
    run_child_body(sock, lambda: _serve(sock, boot))


def _serve(sock: socket.socket, boot: bytes) -> None:
    wid, initializer, initargs, max_frame = pickle.loads(boot)
    WORKER_ID.set(wid)
    fs = FrameSocket(sock, max_frame)
    if initializer is not None:
        try:
            initializer(*initargs)
        except _Terminated:
            raise
        except BaseException as exc:
            fs.send_frame(_HDR.pack(_INIT_FAILED, 0) + dumps(exception_payload(exc)))
            return
    fs.send_frame(_HDR.pack(_READY, 0))
    base = contextvars.copy_context()
    queue: deque[bytes] = deque()
    cancelled: set[int] = set()
    fns: dict[bytes, Any] = {}
    unpack = _HDR.unpack_from

    def take(frames: list[bytes]) -> None:
        for f in frames:
            if f[0] == _CANCEL:
                cancelled.add(unpack(f)[1])
            else:
                queue.append(f)

    while True:
        if not queue:
            frame = fs.recv_frame()
            if frame is None:
                return
            take([frame])
        take(fs.poll_frames())
        if not queue:
            continue
        frame = queue.popleft()
        _, jid = unpack(frame)
        if cancelled:
            if jid in cancelled:
                cancelled.discard(jid)
                fs.send_frame(_HDR.pack(_SKIPPED, jid))
                continue
            for stale in [c for c in cancelled if c < jid]:
                cancelled.discard(stale)
        try:
            kind, fn_bytes, args, kwargs, snapshot = pickle.loads(memoryview(frame)[9:])
            fn = fns.get(fn_bytes)
            if fn is None:
                fn = pickle.loads(fn_bytes)
                if len(fns) >= _FN_CACHE:
                    fns.pop(next(iter(fns)))
                fns[fn_bytes] = fn
            value = base.copy().run(_call, kind, fn, args, kwargs, snapshot)
        except _Terminated:
            raise
        except BaseException as exc:
            body = dumps(exception_payload(exc))
            fs.send_frame(_HDR.pack(_ERR, jid) + body)
            continue
        try:
            body = dumps(value)
            if len(body) + _HDR.size > fs.max_frame_size:
                # Refused here, not by the channel: the worker lives on.
                raise PoolMessageTooLarge(len(body) + _HDR.size, fs.max_frame_size, "result")
        except Exception as exc:
            fs.send_frame(_HDR.pack(_ERR, jid) + dumps(exception_payload(exc)))
            continue
        fs.send_frame(_HDR.pack(_OK, jid) + body)


def _call(kind: int, fn: Any, args: Any, kwargs: Any, snapshot: Snapshot | None) -> Any:
    if snapshot:
        restore_snapshot(snapshot)
    return run_job_body(kind, fn, args, kwargs)


# -- parent side ----------------------------------------------------------------


class _Worker:
    __slots__ = (
        "busy_since",
        "channel",
        "channel_failed",
        "handle",
        "inflight",
        "ready",
        "retiring",
        "sent",
        "stopping",
        "wid",
    )

    def __init__(self, wid: str, handle: ProcessHandle) -> None:
        self.wid = wid
        self.handle = handle
        self.channel: Channel | None = None
        self.inflight: dict[int, Job] = {}
        self.ready = False
        self.retiring = False
        self.stopping = False
        self.channel_failed = False  # stopped because its channel broke: not a stop we chose
        self.sent = 0
        self.busy_since = 0.0


class ProcessBackend(Backend):
    """Run jobs in worker processes with crash isolation."""

    def __init__(self) -> None:
        self._workers: list[_Worker] = []
        self._pending: deque[Job] = deque()
        self._spawning: set[asyncio.Task[None]] = set()
        self._stopping: set[asyncio.Task[Any]] = set()
        self._config: PoolConfig | None = None
        self._ctx: Any = None
        self._boot_init: _PickledCallable | None = None
        self._ids = 0
        self._closing = False
        self._broken: BaseException | None = None
        self._early_deaths = 0
        self._service = 0.0005  # EWMA of a job's service time, seconds
        self._depth = 2
        self._fn_cache: dict[Any, bytes] = {}
        self._running = 0
        self.crashed = 0

    # -- lifecycle --------------------------------------------------------------

    async def start(self, config: PoolConfig) -> None:
        self._config = config
        ctx = config.context
        self._ctx = default_context(ctx) if ctx is None or isinstance(ctx, str) else ctx
        init = config.initializer
        # The initializer is pickled once; by value when it has to be.
        self._boot_init = None if init is None else _PickledCallable(dumps_callable(init))
        await asyncio.gather(*(self._spawn() for _ in range(config.workers)))

    def _want_more(self) -> bool:
        config = self._config
        assert config is not None
        alive = sum(1 for w in self._workers if not w.retiring and not w.stopping)
        return (
            not self._closing
            and self._broken is None
            and alive + len(self._spawning) < config.workers
        )

    def _replace(self) -> None:
        while self._want_more():
            task = asyncio.get_running_loop().create_task(self._spawn())
            self._spawning.add(task)
            task.add_done_callback(self._spawning.discard)

    async def _spawn(self) -> None:
        config = self._config
        assert config is not None
        self._ids += 1
        wid = f"{config.name}-{self._ids}"
        boot = dumps((wid, self._boot_init, config.initargs, config.max_message_size))
        parent, child = socket.socketpair()
        try:
            handle = await ProcessHandle.start(
                self._ctx,
                _worker_main,
                (child, boot, log_forwarding_config()),
                name=wid,
                daemon=True,
                group=True,
                die_with_parent=True,
            )
        except BaseException as exc:
            parent.close()
            if isinstance(exc, NoMainGuard):  # fail fast: the pool cannot work
                raise ChildProcessFailed(str(exc)) from None
            if not isinstance(exc, Exception):
                raise
            log.error("could not start pool worker %s: %r", wid, exc)
            self._early_death(ChildProcessFailed(f"could not start a pool worker: {exc!r}"))
            return
        finally:
            child.close()
        w = _Worker(wid, handle)
        self._workers.append(w)
        w.channel = Channel(
            parent,
            lambda frame: self._on_frame(w, frame),
            lambda exc: self._on_eof(w, exc),
            config.max_message_size,
        )
        handle.add_exit_callback(lambda _h: self._on_exit(w))
        if self._closing:
            self._stop_worker(w)
            return
        self._fill(w)

    async def shutdown(self, graceful: bool) -> None:
        self._closing = True
        config = self._config
        grace = config.grace if config is not None else 2.0
        for task in list(self._spawning):
            task.cancel()
        for task in list(self._spawning):
            try:
                await task
            except BaseException:
                pass
        for job in self._pending:
            if job.state != FINISHED:
                job.finish(False, asyncio.CancelledError())
        self._pending.clear()
        workers = list(self._workers)
        if graceful:
            for w in workers:
                w.retiring = True
                if w.channel is not None:
                    w.channel.shutdown_write()
            results = await asyncio.gather(
                *(w.handle.wait(grace + 5.0) for w in workers), return_exceptions=True
            )
            for w, code in zip(workers, results, strict=True):
                if code is None:
                    self._stop_worker(w)
        else:
            for w in workers:
                self._stop_worker(w)
        while self._stopping:
            await asyncio.gather(*list(self._stopping), return_exceptions=True)
        for w in list(self._workers):
            await w.handle.wait()

    def force_kill(self) -> None:
        for w in self._workers:
            w.handle.kill()

    # -- dispatch -----------------------------------------------------------------

    def capture_context(self) -> Any:
        return context_snapshot()

    def _fn_bytes(self, fn: Any) -> bytes:
        try:
            data = self._fn_cache.get(fn)
        except TypeError:  # unhashable callable
            return dumps_callable(fn)
        if data is None:
            data = dumps_callable(fn)
            if len(self._fn_cache) >= _FN_CACHE:
                self._fn_cache.pop(next(iter(self._fn_cache)))
            self._fn_cache[fn] = data
        return data

    def _encode(self, job: Job) -> bytes:
        body = (job.kind, self._fn_bytes(job.fn), job.args, job.kwargs, job.context)
        try:
            return _HDR.pack(_JOB, job.id) + pickle.dumps(body, pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass
        if job.context:
            job.context = picklable_snapshot(job.context)
            body = (job.kind, body[1], job.args, job.kwargs, job.context)
        return _HDR.pack(_JOB, job.id) + dumps(body)

    def dispatch(self, job: Job) -> None:
        if self._broken is not None:
            job.finish(False, self._broken_error())
            return
        best: _Worker | None = None
        depth = self._depth
        for w in self._workers:
            if w.retiring or w.stopping or w.channel is None:
                continue
            n = len(w.inflight)
            if n < depth and (best is None or n < len(best.inflight)):
                best = w
                if n == 0:
                    break
        if best is None:
            self._pending.append(job)
        else:
            self._send(best, job)

    def _send(self, w: _Worker, job: Job) -> None:
        try:
            frame = self._encode(job)
            assert w.channel is not None
            limit = w.channel.max_frame_size
            if len(frame) > limit:
                raise PoolMessageTooLarge(len(frame), limit, "arguments")
            w.channel.send_frame(frame)
        except Exception as exc:
            job.finish(False, exc)
            return
        if not w.inflight:
            w.busy_since = time.perf_counter()
        w.inflight[job.id] = job
        job.slot = w
        job.state = RUNNING
        self._running += 1
        w.sent += 1
        config = self._config
        assert config is not None
        if config.max_tasks_per_child is not None and w.sent >= config.max_tasks_per_child:
            w.retiring = True
            self._replace()

    def _fill(self, w: _Worker) -> None:
        pending = self._pending
        depth = self._depth
        while pending and len(w.inflight) < depth and not w.retiring and not w.stopping:
            job = pending.popleft()
            if job.state != FINISHED:
                self._send(w, job)
        if w.retiring and not w.inflight and w.channel is not None:
            w.channel.shutdown_write()

    def cancel(self, job: Job) -> None:
        w = job.slot
        if not isinstance(w, _Worker) or job.id not in w.inflight:
            return  # queued here: skipped when it comes up
        if next(iter(w.inflight)) == job.id:
            # It may be running: stop the worker, replace it.
            self._stop_worker(w)
            self._replace()
        elif w.channel is not None:
            w.channel.send_frame(_HDR.pack(_CANCEL, job.id))

    def _stop_worker(self, w: _Worker) -> None:
        if w.stopping or not w.handle.is_alive():
            return
        w.stopping = True
        config = self._config
        grace = config.grace if config is not None else 2.0
        task = asyncio.get_running_loop().create_task(w.handle.stop(grace))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def counts(self) -> tuple[int, int, int]:
        alive = sum(1 for w in self._workers if w.handle.is_alive())
        queued = sum(1 for j in self._pending if j.state != FINISHED)
        return alive, queued, self._running

    # -- results and deaths -----------------------------------------------------

    def _on_frame(self, w: _Worker, frame: bytes | memoryview) -> None:
        kind, jid = _HDR.unpack_from(frame)
        if kind >= _OK:
            job = w.inflight.pop(jid, None)
            if job is None:
                return
            self._running -= 1
            now = time.perf_counter()
            self._service += (now - w.busy_since - self._service) * 0.2
            w.busy_since = now
            if kind == _OK:
                try:
                    value = pickle.loads(frame[9:])
                except Exception as exc:
                    job.finish(False, exc)
                else:
                    job.finish(True, value)
            elif kind == _ERR:
                job.finish(False, self._remote_exception(frame, w))
            self._adapt()
            self._fill(w)
            if not w.inflight and self._pending and not w.retiring:
                self._rebalance()
        elif kind == _READY:
            w.ready = True
            self._early_deaths = 0
        elif kind == _INIT_FAILED:
            payload = pickle.loads(frame[9:])
            original, remote = rebuild_exception(payload, f"initializer of worker {w.wid}")
            err = ChildProcessFailed(f"pool worker initializer failed: {remote.args[0]}")
            err.__cause__ = original if original is not None else remote
            self._break(err)

    def _adapt(self) -> None:
        s = self._service
        if s >= _TARGET_QUEUE_SECONDS:
            depth = 1
        else:
            depth = min(_MAX_DEPTH, max(2, int(_TARGET_QUEUE_SECONDS / max(s, 1e-6))))
        self._depth = depth

    def _rebalance(self) -> None:
        for other in self._workers:
            if not self._pending:
                return
            self._fill(other)

    def _remote_exception(self, frame: bytes | memoryview, w: _Worker) -> BaseException:
        try:
            payload = pickle.loads(frame[9:])
        except Exception as exc:
            return exc
        where = f"pool worker {w.wid} (pid {w.handle.pid})"
        original, remote = rebuild_exception(payload, where)
        if original is None:
            return remote
        # The remote traceback is printed once, as the cause (what
        # concurrent.futures does), not again in a note.
        original.__cause__ = remote
        original.add_note(f"raised in {where}; its traceback is the cause above")
        return original

    def _on_eof(self, w: _Worker, exc: BaseException | None) -> None:
        if exc is not None:
            # Often the worker died with a frame unread (ECONNRESET): its exit,
            # reported next, is a crash, not a stop of ours.
            w.channel_failed = True
            log.debug("channel of pool worker %s failed: %r", w.wid, exc)
            self._stop_worker(w)

    def _on_exit(self, w: _Worker) -> None:
        if w.channel is not None:
            w.channel.drain_now()
            w.channel.close()
        w.handle.close_when_exited()
        try:
            self._workers.remove(w)
        except ValueError:
            pass
        code = w.handle.exitcode
        expected = (
            (w.stopping and not w.channel_failed)
            or (w.retiring and not w.inflight)
            or self._closing
        )
        requeue: list[Job] = []
        first = w.ready  # before READY nothing ran: every job goes back
        for job in w.inflight.values():
            self._running -= 1
            if job.state == FINISHED:
                first = False
                continue
            if first:
                job.finish(False, WorkerCrashed(w.handle.pid, code))
                first = False
            else:
                job.state = 0
                job.slot = None
                requeue.append(job)
        w.inflight.clear()
        self._pending.extendleft(reversed(requeue))
        if not expected and self._broken is None:
            self.crashed += 1
            log.warning("pool worker %s (pid %s) died: exit code %s", w.wid, w.handle.pid, code)
            if not w.ready:
                script = main_without_guard()
                if script is not None:  # spawn: each worker ran the script and refused
                    self._break(NoMainGuard(script))
                self._early_death(
                    ChildProcessFailed(f"pool workers keep dying at start (last exit code {code})")
                )
        if self._closing:
            for job in requeue:
                job.finish(False, asyncio.CancelledError())
            return
        self._replace()
        self._rebalance()

    def _early_death(self, err: BaseException) -> None:
        self._early_deaths += 1
        if self._early_deaths >= 3:
            self._break(err)

    def _broken_error(self) -> BaseException:
        assert self._broken is not None
        err = ChildProcessFailed(str(self._broken))
        err.__cause__ = self._broken.__cause__ or self._broken
        return err

    def _break(self, err: BaseException) -> None:
        if self._broken is not None:
            return
        self._broken = err
        log.error("pool is broken: %s", err)
        pending, self._pending = self._pending, deque()
        for job in pending:
            job.finish(False, self._broken_error())
        for w in list(self._workers):
            for job in list(w.inflight.values()):
                job.finish(False, self._broken_error())
            self._stop_worker(w)


class _PickledCallable:
    """A callable shipped as pickled bytes; unpickled on first call."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._fn: Any = None

    def __call__(self, *args: Any) -> Any:
        if self._fn is None:
            self._fn = pickle.loads(self.data)
        return self._fn(*args)

    def __getstate__(self) -> bytes:
        return self.data

    def __setstate__(self, data: bytes) -> None:
        self.data = data
        self._fn = None
