"""anycore.abc: the contract of a WorkerPool backend, for engine authors.

``WorkerPool(backend)`` runs its work on a *backend*: ``"tasks"``,
``"threads"``, ``"processes"``, ``"dask"``, or an instance of a
:class:`PoolBackend` subclass, which is how another engine (Ray, a job
queue, a cluster of your own) plugs in.  The pool's front end does
everything else: admission (at most ``max_inflight`` jobs), results
(:class:`~anycore.AsyncResult`, the map iterators, callbacks), chunking of
maps, statistics and the lifecycle.  A backend only runs jobs and stops.

The contract, method by method (the dask backend, ``anycore._workers._pool_dask``,
follows it in about 300 lines):

``start(config)`` (async)
    Called once, on the pool's loop, with a :class:`PoolConfig`.  Start
    the workers (or connect to them) and return when jobs can be taken.
    If it raises, the pool calls ``shutdown(graceful=False)`` and the
    error reaches the caller of ``async with WorkerPool(...)``; refuse the
    options you cannot honour here (a ``ValueError`` naming the option).

``capture_context()``
    Called on submission, in the submitter's context; whatever it returns
    is stored as ``job.context`` before ``dispatch``.  Return
    ``contextvars.copy_context()`` for work that runs in this process, or
    something picklable for work that runs elsewhere.

``dispatch(job)``
    Run the :class:`Job` now or when a worker is free.  Must never block
    and never raise: a job that cannot be run is failed with
    ``job.finish(False, exc)``.  Called on the loop thread.

``job.finish(ok, value)``
    How a backend reports: ``ok=True`` with the result, or ``ok=False``
    with the exception.  Call it on the loop thread (from another thread,
    through ``loop.call_soon_threadsafe``).  It is idempotent, so a late
    result of a cancelled job can simply be reported and is dropped.  A
    ``CALL`` job's value is what ``fn(*args, **kwargs)`` returned; a
    ``MAP`` / ``STARMAP`` job's value is the list of the chunk's results,
    in order.  :func:`run_job_body` computes exactly that.

``cancel(job)``
    Stop the job: drop it if it has not started, stop (or abandon) it if
    it runs.  The front end finishes the job itself right after, so a
    backend must not report it any more (if it does, it is ignored).

``counts()``
    ``(workers alive, jobs queued inside the backend, jobs running)``,
    cheap and synchronous: :meth:`~anycore.WorkerPool.statistics` calls it.
    A backend may also have a ``crashed`` attribute (workers lost).

``shutdown(graceful)`` (async)
    Stop every worker and release everything (processes, connections,
    temporary files).  ``graceful=True`` comes after all jobs finished;
    ``False`` means now (terminate, cancellation, a failed start).  It is
    called once, shielded from cancellation, and must end in bounded time.

``force_kill()`` (optional)
    Synchronous last resort of the runtime's forced exit: kill the
    workers now, wait for nothing.

``scatter(obj)`` (async, optional)
    Put a large argument on the workers once and return what jobs should
    be given instead (a handle the engine resolves to *obj*).  The default
    returns *obj* itself.

``auto_chunks`` (class attribute)
    Whether ``map`` / ``starmap`` without a chunksize group items into
    chunks (worth it when each dispatch costs a message).

Job attributes a backend reads: ``fn``, ``args`` (a CALL's positional
arguments; a chunk's items), ``kwargs`` (None or a dict), ``kind``
(:data:`CALL`, :data:`MAP` or :data:`STARMAP`), ``context``, ``id``
(unique in its pool); it may set ``state`` to :data:`RUNNING` and keep
anything in ``slot``.
"""

from __future__ import annotations

from ._workers._pool_contract import (
    CALL,
    FINISHED,
    MAP,
    QUEUED,
    RUNNING,
    STARMAP,
    Backend as PoolBackend,
    Job,
    PoolConfig,
    run_job_body,
)

__all__ = [
    "CALL",
    "FINISHED",
    "MAP",
    "QUEUED",
    "RUNNING",
    "STARMAP",
    "Job",
    "PoolBackend",
    "PoolConfig",
    "run_job_body",
]
