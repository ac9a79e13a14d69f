"""The "dask" pool backend: a WorkerPool's jobs on a Dask distributed cluster.

``WorkerPool("dask", address=None | "tcp://host:port", workers=N)``.  With
no address the backend starts a ``LocalCluster`` of *workers* worker
processes (one thread each, loopback only, no dashboard, a small memory
limit per worker) and closes it at shutdown; with an address it connects to
that scheduler and leaves the cluster running.  Everything goes through
distributed's asyncio-native client (``Client(asynchronous=True)``) on the
running loop (asyncio or uvloop), so nothing blocks it.

Design points:

* A job is one Dask task of :func:`_run_task` (a key of its own,
  ``pure=False``; the jobs dispatched in one loop turn go as one
  ``client.map``, one graph update for all), which runs the job body on
  the worker in a copy of the caller's carried context (the processes
  backend's snapshot) with the worker id ``<pool>-<dask worker name>`` set.  Its outcome reaches
  ``job.finish`` through one small watcher task per job awaiting the Dask
  future: distributed's futures report their state only to awaiters
  (``Future.add_done_callback`` runs callbacks in a thread of its own).
* Cancelling releases the job's future: a queued task is forgotten by the
  scheduler; a running one cannot be interrupted (a Dask worker thread,
  like the threads backend), its result is dropped.
* Worker loss policy: Dask's scheduler re-runs a task whose worker died on
  another worker (the nanny restarts the dead one); a task under which
  workers died more than ``allowed_failures`` times (default: Dask's
  ``distributed.scheduler.allowed-failures``, 3) fails with
  :class:`~anycore.errors.DaskWorkerLost`.  Only that task fails; the pool
  keeps working.
* ``scatter(obj)`` puts *obj* on the cluster once and returns its Dask
  future; passed as an argument of a call, an item of a map or an element
  of a starmap's tuple, it reaches the task as the object.  Lists, tuples,
  sets and dicts are scattered in a box (pickled whole: Dask would
  serialize them item by item), which the task opens.  Scattered data
  lives as long as the pool.
* Logs: a worker plugin (registered by the pool, removed at shutdown) adds
  a handler to each worker's root logger that forwards the records logged
  inside this pool's tasks, with ``worker_id`` set on them, as Dask events
  to this client, which hands them to the parent's loggers of the same name
  (only when the parent's root logger has handlers, as for processes).  The
  same plugin runs the pool's *initializer* on each worker as it joins.

Rejected: ``distributed.as_completed`` (a coroutine per future too, plus a
queue); ``Client.forward_logging`` (one cluster-wide topic: every client on
a shared cluster would get every pool's records, without ``worker_id``);
``max_tasks_per_child`` (Dask has worker ``lifetime=`` for that; refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import shutil
import signal
import tempfile
import uuid
from contextvars import ContextVar
from typing import Any

try:
    import distributed
    from distributed.diagnostics.plugin import WorkerPlugin
    from distributed.scheduler import KilledWorker
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "WorkerPool('dask') runs on Dask distributed, which is not installed: "
        "pip install 'anycore[dask]'"
    ) from exc

from .._core._state import WORKER_ID
from ..errors import ChildProcessFailed, DaskWorkerLost
from ..logging._receiver import dispatch_locally
from ._carry import Snapshot, context_snapshot, picklable_snapshot, restore_snapshot
from ._pool_contract import CALL, FINISHED, MAP, RUNNING, Backend, Job, PoolConfig, run_job_body

__all__ = ["DaskBackend"]

log = logging.getLogger("anycore.pools")

#: Set inside a job of one pool (its token): whose records to forward.
_POOL_TOKEN: ContextVar[str | None] = ContextVar("anycore.dask_pool", default=None)

_PLAIN = (str, int, float, bool, type(None))
# Not forwarded: what getMessage() replaces, and structlog's markers (the
# parent would take the rendered message for an event dict).
_NOT_SENT = frozenset(
    {"args", "exc_info", "message", "msg", "_from_structlog", "_logger", "_name", "_record"}
)

# While a pool's own LocalCluster runs, distributed's INFO chatter (starting,
# registering, closing) is held back in this process: WARNING and above pass.
_quiet_pools = 0
_quiet_saved_level = logging.NOTSET


def _quiet_distributed(on: bool) -> None:
    global _quiet_pools, _quiet_saved_level
    logger = logging.getLogger("distributed")
    if on:
        _quiet_pools += 1
        if _quiet_pools == 1:
            _quiet_saved_level = logger.level
            if logger.getEffectiveLevel() < logging.WARNING:
                logger.setLevel(logging.WARNING)
    else:
        _quiet_pools -= 1
        if _quiet_pools == 0 and logger.level == logging.WARNING:
            logger.setLevel(_quiet_saved_level)


# -- worker side ----------------------------------------------------------------


def _worker_id(prefix: str) -> str:
    try:
        name = distributed.get_worker().name
    except ValueError:  # not in a worker (run inline): the process stands in
        name = os.getpid()
    return f"{prefix}-{name}"


class _Box:
    """A scattered list, tuple, set or dict, pickled whole.

    Dask serializes those collections item by item (20 s for a list of
    200,000 ints); in a box they go as one pickle, and the task unboxes them.
    """

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return (_Box, (self.obj,))


_BOXED = (list, tuple, set, frozenset, dict)


def _unbox(x: Any) -> Any:
    return x.obj if type(x) is _Box else x


def _unbox_args(kind: int, args: Any, kwargs: Any) -> tuple[Any, Any]:
    """Scattered arguments: as arguments of a call, items of a map, of a starmap's tuples."""
    if kind == CALL:
        args = tuple(_unbox(a) for a in args)
        if kwargs:
            kwargs = {k: _unbox(v) for k, v in kwargs.items()}
    elif kind == MAP:
        args = [_unbox(x) for x in args]
    else:
        args = [tuple(_unbox(a) for a in item) for item in args]
    return args, kwargs


def _run_task(
    token: str,
    prefix: str,
    kind: int,
    fn: Any,
    args: Any,
    kwargs: Any,
    snapshot: Snapshot | None,
    boxed: bool,
) -> Any:
    """The body of every Dask task of a pool (runs on a worker)."""
    if boxed:
        args, kwargs = _unbox_args(kind, args, kwargs)
    ctx = contextvars.copy_context()
    return ctx.run(_run_in_context, token, _worker_id(prefix), kind, fn, args, kwargs, snapshot)


def _run_in_context(
    token: str,
    wid: str,
    kind: int,
    fn: Any,
    args: Any,
    kwargs: Any,
    snapshot: Snapshot | None,
) -> Any:
    _POOL_TOKEN.set(token)
    WORKER_ID.set(wid)
    if snapshot:
        restore_snapshot(snapshot)
    return run_job_body(kind, fn, args, kwargs)


class _Forwarder(logging.Handler):
    """On a worker: send the records of one pool's tasks to its client."""

    def __init__(self, worker: Any, topic: str, token: str, level: int) -> None:
        super().__init__(level)
        self._worker = worker
        self._topic = topic
        self._token = token

    def emit(self, record: logging.LogRecord) -> None:
        if _POOL_TOKEN.get() != self._token:
            return
        try:
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            attrs: dict[str, Any] = {}
            for key, value in record.__dict__.items():
                if key in _NOT_SENT:
                    continue
                attrs[key] = value if isinstance(value, _PLAIN) else repr(value)
            attrs["msg"] = record.getMessage()
            attrs["worker_id"] = WORKER_ID.get()
            self._worker.log_event(self._topic, attrs)
        except Exception:
            self.handleError(record)


def _not_a_task_failure(record: logging.LogRecord) -> bool:
    # The pool hands a task's exception to its caller; the worker's own
    # "Compute Failed" report of it is noise.
    return not (isinstance(record.msg, str) and record.msg.startswith("Compute Failed"))


class _PoolPlugin(WorkerPlugin):  # type: ignore[misc,unused-ignore]
    """Installed on every worker of the cluster for one pool's lifetime."""

    def __init__(
        self,
        token: str,
        prefix: str,
        topic: str | None,
        level: int,
        initializer: Any,
        initargs: tuple[Any, ...],
        quiet: bool,
    ) -> None:
        self.quiet = quiet
        self.token = token
        self.prefix = prefix
        self.topic = topic
        self.level = level
        self.initializer = initializer
        self.initargs = initargs
        self._handler: _Forwarder | None = None
        self._old_level: int | None = None

    def setup(self, worker: Any) -> None:
        if self.quiet:
            logging.getLogger("distributed.worker").addFilter(_not_a_task_failure)
        if self.topic is not None:
            root = logging.getLogger()
            self._handler = _Forwarder(worker, self.topic, self.token, self.level)
            root.addHandler(self._handler)
            if root.getEffectiveLevel() > self.level:
                self._old_level = root.level
                root.setLevel(self.level)
        if self.initializer is not None:
            contextvars.copy_context().run(self._initialize)

    def _initialize(self) -> None:
        _POOL_TOKEN.set(self.token)
        WORKER_ID.set(_worker_id(self.prefix))
        self.initializer(*self.initargs)

    def teardown(self, worker: Any) -> None:
        root = logging.getLogger()
        if self._handler is not None:
            root.removeHandler(self._handler)
            self._handler = None
        if self._old_level is not None:
            root.setLevel(self._old_level)
            self._old_level = None


# -- client side ----------------------------------------------------------------


class DaskBackend(Backend):
    """Run a pool's jobs on a Dask distributed cluster.

    Args:
        address: the scheduler to connect to (``"tcp://127.0.0.1:8786"``);
            None starts a LocalCluster of ``workers`` processes owned by
            the pool.
        allowed_failures: LocalCluster only: how many worker deaths a task
            survives (it is re-run) before it fails with DaskWorkerLost;
            default Dask's ``distributed.scheduler.allowed-failures`` (3).
            With an address it is the scheduler's own setting.
        memory_limit: LocalCluster only: each worker's memory limit.
        connect_timeout: seconds to wait for the scheduler at start.
    """

    auto_chunks = True

    def __init__(
        self,
        address: str | None = None,
        *,
        allowed_failures: int | None = None,
        memory_limit: str | int = "512MiB",
        connect_timeout: float = 30.0,
    ) -> None:
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a string like 'tcp://host:port', not {address!r}")
        if address is not None and allowed_failures is not None:
            raise ValueError(
                "allowed_failures applies to the pool's own LocalCluster; "
                "an existing scheduler has its own (distributed.scheduler.allowed-failures)"
            )
        if allowed_failures is not None and allowed_failures < 0:
            raise ValueError("allowed_failures must be 0 or more")
        self.address = address
        self._allowed_failures = allowed_failures
        self._memory_limit = memory_limit
        self._connect_timeout = connect_timeout
        self._token = uuid.uuid4().hex[:12]
        self._cluster: Any = None
        self._client: Any = None
        self._plugin_name: str | None = None
        self._topic: str | None = None
        self._config: PoolConfig | None = None
        self._watchers: dict[int, tuple[Any, asyncio.Task[None]]] = {}
        self._scattered: list[Any] = []
        self._outbox: list[Job] = []
        self._starting: asyncio.Future[None] | None = None
        self._boxed = False  # a collection was scattered: tasks unbox their arguments
        self._closing = False
        self._quiet = False
        self._scratch: str | None = None
        self.crashed = 0

    # -- lifecycle --------------------------------------------------------------

    async def start(self, config: PoolConfig) -> None:
        if config.max_tasks_per_child is not None:
            raise ValueError(
                "max_tasks_per_child is not supported by the dask backend "
                "(Dask workers have lifetime= instead)"
            )
        self._config = config
        if self.address is None:
            # No dashboard, and the scheduler's HTTP routes on a free loopback
            # port (not 8787, which a second cluster would fight over).
            scheduler_kwargs: dict[str, Any] = {
                "dashboard": False,
                "dashboard_address": "127.0.0.1:0",
            }
            if self._allowed_failures is not None:
                scheduler_kwargs["allowed_failures"] = self._allowed_failures
            # Scratch space of its own: the shared default one is guarded by
            # a file lock that other clusters on the machine contend for.
            self._scratch = tempfile.mkdtemp(prefix="anycore-dask-")
            self._cluster = distributed.LocalCluster(  # type: ignore[no-untyped-call,unused-ignore]
                n_workers=config.workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                memory_limit=self._memory_limit,
                local_directory=self._scratch,
                silence_logs=logging.ERROR,
                scheduler_kwargs=scheduler_kwargs,
                asynchronous=True,
            )
            self._quiet = True
            _quiet_distributed(True)
            # Shielded: distributed cannot close a cluster cancelled half-way
            # up; on cancellation, shutdown() lets it finish, then closes it.
            self._starting = asyncio.ensure_future(self._cluster_up(self._cluster))
            await asyncio.shield(self._starting)
            target: Any = self._cluster
        else:
            target = self.address
        self._client = distributed.Client(  # type: ignore[no-untyped-call,unused-ignore]
            target,
            asynchronous=True,
            set_as_default=False,
            timeout=self._connect_timeout,
        )
        await self._client
        await self._install_plugin(config)

    @staticmethod
    async def _cluster_up(cluster: Any) -> None:
        await cluster

    async def _install_plugin(self, config: PoolConfig) -> None:
        root = logging.getLogger()
        if root.handlers:
            self._topic = f"anycore-logs-{self._token}"
            self._client.subscribe_topic(self._topic, self._on_log_event)
        quiet = self._cluster is not None
        if self._topic is None and config.initializer is None and not quiet:
            return
        plugin = _PoolPlugin(
            self._token,
            config.name,
            self._topic,
            root.getEffectiveLevel(),
            config.initializer,
            config.initargs,
            quiet,
        )
        self._plugin_name = f"anycore-pool-{self._token}"
        try:
            await self._client.register_plugin(plugin, name=self._plugin_name)
        except Exception as exc:
            if config.initializer is None:
                raise
            err = ChildProcessFailed(f"pool worker initializer failed: {exc!r}")
            raise err from exc

    def _on_log_event(self, event: Any) -> None:
        _, attrs = event
        if isinstance(attrs, dict):
            dispatch_locally(logging.makeLogRecord(attrs))

    async def shutdown(self, graceful: bool) -> None:
        self._closing = True
        outbox, self._outbox = self._outbox, []
        for job in outbox:
            if job.state != FINISHED:
                job.finish(False, asyncio.CancelledError())
        watchers = list(self._watchers.values())
        self._watchers.clear()
        for fut, task in watchers:
            task.cancel()
            fut.release()
        if watchers:
            await asyncio.gather(*(t for _, t in watchers), return_exceptions=True)
        client, self._client = self._client, None
        cluster, self._cluster = self._cluster, None
        timeout = self._connect_timeout
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(starting), timeout)
        if client is not None:
            scattered, self._scattered = self._scattered, []
            for fut in scattered:
                fut.release()
            if self._plugin_name is not None and cluster is None and client.status == "running":
                # A shared cluster keeps running: take this pool's plugin off it.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(timeout):
                        await client.unregister_worker_plugin(self._plugin_name)
            if self._topic is not None:
                with contextlib.suppress(Exception):
                    client.unsubscribe_topic(self._topic)
            with contextlib.suppress(Exception):
                await client.close(timeout=timeout)
        try:
            if cluster is not None:
                await cluster.close(timeout=timeout)
        finally:
            if self._quiet:
                self._quiet = False
                _quiet_distributed(False)
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None

    def force_kill(self) -> None:
        cluster = self._cluster
        if cluster is None:
            return
        for nanny in list(getattr(cluster, "workers", {}).values()):
            pid = getattr(nanny, "pid", None)
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    # -- dispatch -----------------------------------------------------------------

    def capture_context(self) -> Any:
        return context_snapshot()

    def _submit(self, job: Job) -> Any:
        config = self._config
        assert config is not None
        return self._client.submit(
            _run_task,
            self._token,
            config.name,
            job.kind,
            job.fn,
            job.args,
            job.kwargs,
            job.context,
            self._boxed,
            key=self._key(job),
            pure=False,
        )

    def _key(self, job: Job) -> str:
        return f"{getattr(job.fn, '__name__', 'job')}-{self._token}-{job.id}"

    def dispatch(self, job: Job) -> None:
        if self._client is None or self._closing:
            job.finish(False, ChildProcessFailed("the dask backend is not connected"))
            return
        # Jobs dispatched in one turn of the loop (a map's window) go to the
        # scheduler as one client.map: one graph update instead of one each.
        job.state = RUNNING
        self._outbox.append(job)
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        jobs = [job for job in self._outbox if job.state != FINISHED]
        self._outbox = []
        if not jobs:
            return
        if self._client is None or self._closing:
            for job in jobs:
                job.finish(False, ChildProcessFailed("the dask backend is not connected"))
            return
        if len(jobs) > 1:
            config = self._config
            assert config is not None
            n = len(jobs)
            try:
                futures = self._client.map(
                    _run_task,
                    [self._token] * n,
                    [config.name] * n,
                    [job.kind for job in jobs],
                    [job.fn for job in jobs],
                    [job.args for job in jobs],
                    [job.kwargs for job in jobs],
                    [job.context for job in jobs],
                    [self._boxed] * n,
                    key=[self._key(job) for job in jobs],
                    pure=False,
                )
            except Exception:
                pass  # one by one below: only the job that cannot go fails
            else:
                for job, fut in zip(jobs, futures, strict=True):
                    self._watch_future(job, fut)
                return
        for job in jobs:
            self._submit_one(job)

    def _submit_one(self, job: Job) -> None:
        try:
            try:
                fut = self._submit(job)
            except Exception:
                if not job.context:
                    raise
                job.context = picklable_snapshot(job.context)
                fut = self._submit(job)
        except Exception as exc:
            job.finish(False, exc)
            return
        self._watch_future(job, fut)

    def _watch_future(self, job: Job, fut: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._watch(job, fut))
        self._watchers[job.id] = (fut, task)
        job.slot = fut

    async def _watch(self, job: Job, fut: Any) -> None:
        try:
            value = await fut
        except asyncio.CancelledError:
            raise
        except KilledWorker as exc:
            self.crashed += 1
            err = DaskWorkerLost(f"the Dask workers running {job!r} died: {exc}")
            err.__cause__ = exc
            job.finish(False, err)
        except BaseException as exc:
            job.finish(False, exc)
        else:
            job.finish(True, value)
        finally:
            self._watchers.pop(job.id, None)
            fut.release()

    def cancel(self, job: Job) -> None:
        entry = self._watchers.pop(job.id, None)
        if entry is None:
            return
        fut, task = entry
        task.cancel()
        fut.release()

    def counts(self) -> tuple[int, int, int]:
        client = self._client
        workers = 0
        if client is not None:
            info = client.scheduler_info()
            workers = int(info.get("n_workers", len(info.get("workers", ()))))
        return workers, 0, len(self._watchers) + len(self._outbox)

    # -- data ---------------------------------------------------------------------

    async def scatter(self, obj: Any) -> Any:
        """Put *obj* on the cluster once; return its Dask future (a handle)."""
        client = self._client
        if client is None:
            raise ChildProcessFailed("the dask backend is not connected")
        if type(obj) in _BOXED:
            obj = _Box(obj)
            self._boxed = True
        # In a list: scatter() would send a list's items one by one.
        (fut,) = await client.scatter([obj], hash=False)
        self._scattered.append(fut)
        return fut
