"""ChildProcess: multiprocessing.Process re-expressed async.

A ChildProcess runs one Python callable (or a subclass's ``run()``) in a child
process and brings back its return value, or its exception with the child's
traceback.  It is assembled from its two neighbours:

* ``_start``: the start method, the main-module guard, ``die_with_parent``,
  the child's prologue and exit, and the :class:`~._start.ProcessHandle` that
  watches the child from the loop;
* ``_wire``: the pickled target travels as the child's start argument, the
  outcome comes back as one frame on a socketpair (``(kind, value)``: a
  result, an exception payload, or a ``sys.exit`` code).

What this module adds: the target's payload (the subclass form sends the
instance's own attributes), the child's entry (stdout / stderr / env / cwd set
up before the target runs, a coroutine target run under ``asyncio.run``), the
outcome's interpretation (:meth:`ChildProcess.result`) and the lifecycle
(async context manager, registration with the runtime's ``Phase.PROCESSES``
and forced exit).

Rejected: a ``multiprocessing.Queue`` or ``Pipe`` for the outcome (their
reads block the loop); the frame on the socketpair is read even when the
child died right after sending it: the channel is drained when the exit is
seen.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import pickle
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from .._core._backend import require_asyncio
from .._core._runtime import Phase, current_runtime
from ..errors import ChildProcessFailed, RuntimeStateError, describe_returncode
from ._start import (
    NoMainGuard,
    ProcessHandle,
    _Terminated,
    child_prologue,
    default_context,
    log_forwarding_config,
    main_without_guard,
    run_awaitable,
    run_child_body,
)
from ._wire import (
    DEFAULT_MAX_FRAME,
    Channel,
    FrameSocket,
    dumps,
    dumps_carrying,
    exception_payload,
    rebuild_exception,
)

__all__ = ["ChildProcess", "iter_descendants"]

T = TypeVar("T")


# -- ChildProcess -------------------------------------------------------------

_OK, _ERR, _EXIT = 0, 1, 2

# stdout, stderr, env, cwd of a ChildProcess: sockets travel to the child the way
# multiprocessing passes them (duplicated by the spawning machinery).
_Setup = tuple[socket.socket | None, socket.socket | None, dict[str, str] | None, str | None]


def _child_setup(setup: _Setup) -> None:
    """Apply a ChildProcess's stdout / stderr / env / cwd in the child."""
    out, err, env, cwd = setup
    for fd, target in ((1, out), (2, err)):
        if target is not None:
            os.dup2(target.fileno(), fd)
            target.close()
    for stream, target in ((sys.stdout, out), (sys.stderr, err)):
        if target is not None and stream is not None:
            with contextlib.suppress(AttributeError, ValueError):
                # Captured line by line by the parent: do not sit on a block buffer.
                stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)


def _child_entry(
    sock: socket.socket,
    payload: bytes,
    new_group: bool,
    setup: _Setup | None = None,
    log_forwarding: dict[str, Any] | None = None,
) -> None:
    """Body of a ChildProcess (runs in the child)."""
    child_prologue(new_group, log_forwarding)
    if setup is not None:
        _child_setup(setup)
    channel = FrameSocket(sock)

    def body() -> int | None:
        exit_code: int | None = None
        try:
            fn, args, kwargs = pickle.loads(payload)
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = run_awaitable(value)
            try:
                message = dumps((_OK, value))
            except Exception as exc:
                message = dumps((_ERR, exception_payload(exc)))
                exit_code = 1
        except _Terminated:
            raise  # nothing to report: the parent sees the SIGTERM status
        except SystemExit as exc:
            code = exc.code
            exit_code = code if isinstance(code, int) else (0 if code is None else 1)
            message = dumps((_EXIT, exit_code))
        except BaseException as exc:
            message = dumps((_ERR, exception_payload(exc)))
            exit_code = 1
        try:
            channel.send_frame(message)
        except OSError:
            pass
        return exit_code

    exit_code = run_child_body(sock, body)
    if exit_code:
        sys.exit(exit_code)


# What ChildProcess itself keeps on an instance; the rest is the subclass's
# (sent to the child for run()).
_CHILD_PROCESS_ATTRS = frozenset(
    {
        "_setup",
        "_target",
        "_args",
        "_kwargs",
        "_name",
        "daemon",
        "_context",
        "_group",
        "grace",
        "_max_result",
        "_handle",
        "_channel",
        "_outcome",
        "_outcome_error",
        "_hooks",
        "_use_runtime",
        "_die_with_parent",
        "_closed",
    }
)


def _run_subclass(cls: type[ChildProcess[Any]], state: dict[str, Any]) -> Any:
    # In the child: rebuild the subclass instance from its own attributes.
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj.run()


class ChildProcess(Generic[T]):
    """Run ``target(*args, **kwargs)`` in a child process (multiprocessing.Process).

    The return value, or the exception with its traceback, comes back to the
    parent (:meth:`result`).  A coroutine function runs under ``asyncio.run``
    in the child.  The child starts in its own process group;
    :meth:`terminate` and :meth:`kill` signal the group.

    Use it as an async context manager: on exit a daemon child is stopped
    (SIGTERM, *grace* seconds, SIGKILL) and reaped; a non-daemon child is
    waited for, unless the block raised or was cancelled, in which case it
    is stopped too.  Nothing is left behind either way.  Under a runtime the
    child is also stopped in ``Phase.PROCESSES`` and SIGKILLed on a forced
    exit.

    Args:
        target: the callable; pickled, or cloudpickled (lambdas, closures).
        *args: its positional arguments.
        kwargs: its keyword arguments.
        name: the process name (multiprocessing's ``Process.name``).
        daemon: stop the child when the scope ends instead of waiting for it.
        context: a start method name or a multiprocessing context; default
            forkserver on Linux, spawn elsewhere.
        new_process_group: start the child in its own process group (so a
            terminal's Ctrl-C does not reach it and signals reach its children).
        grace: seconds between SIGTERM and SIGKILL when stopping.
        max_result_size: the largest pickled result accepted.
        register: under an anycore runtime, stop the child in
            ``Phase.PROCESSES`` and SIGKILL it on a forced exit.  ``False``
            leaves it out of both: its owner takes responsibility for stopping
            it, forced exits included.
        stdout, stderr: a connected stream socket the child's descriptor 1 / 2
            is redirected to before the target runs (``sys.stdout`` /
            ``sys.stderr`` become line buffered); ``None`` inherits.  The
            caller keeps its copy: close it after :meth:`start` so the reading
            end sees EOF when the child exits.
        env: the child's whole environment (``os.environ`` is replaced before
            the target runs); ``None`` keeps the one it starts with.
        cwd: the child's working directory, entered before the target runs.
        die_with_parent: SIGKILL the child (and its process group) if this
            process dies, even by SIGKILL: PR_SET_PDEATHSIG against the fork
            server, which dies with us too, plus the spawn guard (see
            docs/pools.md for the limits).  ``False`` lets a non-daemon child
            outlive a crashed parent.

    Raises:
        NotADirectoryError, FileNotFoundError: ``cwd`` is not a directory.
    """

    @overload
    def __init__(
        self: ChildProcess[T],
        target: Callable[..., Awaitable[T]],
        *args: Any,
        kwargs: Mapping[str, Any] | None = ...,
        name: str | None = ...,
        daemon: bool = ...,
        context: str | Any | None = ...,
        new_process_group: bool = ...,
        grace: float = ...,
        max_result_size: int = ...,
        register: bool = ...,
        stdout: socket.socket | None = ...,
        stderr: socket.socket | None = ...,
        env: Mapping[str, str] | None = ...,
        cwd: str | os.PathLike[str] | None = ...,
        die_with_parent: bool = ...,
    ) -> None: ...

    @overload
    def __init__(
        self: ChildProcess[T],
        target: Callable[..., T],
        *args: Any,
        kwargs: Mapping[str, Any] | None = ...,
        name: str | None = ...,
        daemon: bool = ...,
        context: str | Any | None = ...,
        new_process_group: bool = ...,
        grace: float = ...,
        max_result_size: int = ...,
        register: bool = ...,
        stdout: socket.socket | None = ...,
        stderr: socket.socket | None = ...,
        env: Mapping[str, str] | None = ...,
        cwd: str | os.PathLike[str] | None = ...,
        die_with_parent: bool = ...,
    ) -> None: ...

    @overload
    def __init__(
        self: ChildProcess[Any],
        target: None = ...,
        *,
        kwargs: Mapping[str, Any] | None = ...,
        name: str | None = ...,
        daemon: bool = ...,
        context: str | Any | None = ...,
        new_process_group: bool = ...,
        grace: float = ...,
        max_result_size: int = ...,
        register: bool = ...,
        stdout: socket.socket | None = ...,
        stderr: socket.socket | None = ...,
        env: Mapping[str, str] | None = ...,
        cwd: str | os.PathLike[str] | None = ...,
        die_with_parent: bool = ...,
    ) -> None: ...

    def __init__(
        self,
        target: Callable[..., T] | Callable[..., Awaitable[T]] | None = None,
        *args: Any,
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        daemon: bool = True,
        context: str | Any | None = None,
        new_process_group: bool = True,
        grace: float = 2.0,
        max_result_size: int = DEFAULT_MAX_FRAME,
        register: bool = True,
        stdout: socket.socket | None = None,
        stderr: socket.socket | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        cwd_text = None if cwd is None else os.fspath(cwd)
        if cwd_text is not None and not os.path.isdir(cwd_text):
            kind = FileNotFoundError if not os.path.exists(cwd_text) else NotADirectoryError
            raise kind(f"cwd is not a directory: {cwd_text!r}")
        self._setup: _Setup | None = None
        if stdout is not None or stderr is not None or env is not None or cwd_text is not None:
            self._setup = (stdout, stderr, None if env is None else dict(env), cwd_text)
        if target is None and type(self).run is ChildProcess.run:
            raise TypeError(
                "ChildProcess needs a target, or a subclass that overrides run() "
                "(multiprocessing.Process's two forms)"
            )
        self._target = target
        self._args = args
        self._kwargs = dict(kwargs or {})
        self._name = name
        self.daemon = daemon
        self._context = context
        self._group = new_process_group
        self.grace = grace
        self._max_result = max_result_size
        self._handle: ProcessHandle | None = None
        self._channel: Channel | None = None
        self._outcome: tuple[int, Any] | None = None
        self._outcome_error: BaseException | None = None
        self._hooks: list[Any] = []
        self._use_runtime = register
        self._die_with_parent = die_with_parent
        self._closed = False

    # introspection
    @property
    def name(self) -> str:
        """The process name."""
        if self._handle is not None:
            return str(self._handle.process.name)
        target = self._target if self._target is not None else type(self)
        return self._name or f"ChildProcess-{getattr(target, '__name__', 'target')}"

    @property
    def pid(self) -> int | None:
        """The process id, None before :meth:`start`."""
        return None if self._handle is None else self._handle.pid

    @property
    def exitcode(self) -> int | None:
        """None while running; the exit code, or -N when killed by signal N."""
        return None if self._handle is None else self._handle.exitcode

    def is_alive(self) -> bool:
        """True between start and the observed exit."""
        return self._handle is not None and self._handle.is_alive()

    # lifecycle
    async def start(self) -> None:
        """Start the child.

        Raises:
            RuntimeStateError: it was started already.
            BackendNotSupported: called from a trio task.
            pickle.PicklingError: the target or its arguments do not pickle.
        """
        require_asyncio(
            "ChildProcess",
            "on trio run a function in another process with "
            "`await anyio.to_process.run_sync(fn, *args)`",
        )
        if self._handle is not None or self._closed:
            raise RuntimeStateError("a ChildProcess can be started only once")
        payload = self._payload()
        ctx = (
            default_context(self._context)
            if self._context is None or isinstance(self._context, str)
            else self._context
        )
        parent_sock, child_sock = socket.socketpair()
        try:
            self._handle = await ProcessHandle.start(
                ctx,
                _child_entry,
                (child_sock, payload, self._group, self._setup, log_forwarding_config()),
                name=self._name,
                daemon=self.daemon,
                group=self._group,
                die_with_parent=self._die_with_parent,
            )
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        self._channel = Channel(parent_sock, self._on_frame, self._on_eof, self._max_result)
        self._handle.add_exit_callback(self._on_exit)
        self._register_runtime()

    def run(self) -> Any:
        """What the child runs when no target was given: override it in a subclass.

        The subclass form of multiprocessing.Process: ``class Clock(ChildProcess):
        def run(self): ...``.  The child gets a copy of the instance's own
        attributes (those the subclass set; they must pickle) and calls
        ``run()`` on it - a coroutine function runs under ``asyncio.run``.
        Its return value is :meth:`result`.
        """
        raise NotImplementedError

    def _payload(self) -> bytes:
        module: str | None
        if self._target is None:
            cls = type(self)
            state = {k: v for k, v in vars(self).items() if k not in _CHILD_PROCESS_ATTRS}
            triple: tuple[Any, ...] = (_run_subclass, (cls, state), {})
            module = cls.__module__
            qualname = cls.__qualname__
        else:
            triple = (self._target, self._args, self._kwargs)
            module = getattr(self._target, "__module__", None)
            qualname = getattr(self._target, "__qualname__", "")
        return dumps_carrying(triple, module, qualname)

    def _register_runtime(self) -> None:
        rt = current_runtime() if self._use_runtime else None
        if rt is None:
            return
        handle = self._handle
        assert handle is not None
        self._hooks.append(
            rt.add_shutdown_step(Phase.PROCESSES, f"child process {self.name}", self._runtime_stop)
        )
        self._hooks.append(rt.add_force_exit_hook(handle.kill))

    async def _runtime_stop(self) -> None:
        if self.daemon:
            await self.aclose()
        else:
            try:
                await self.join()
            finally:
                await self.aclose()

    def _on_frame(self, frame: bytes | memoryview) -> None:
        if self._outcome is None:
            try:
                self._outcome = pickle.loads(frame)
            except Exception as exc:
                self._outcome_error = exc

    def _on_eof(self, exc: BaseException | None) -> None:
        if exc is not None and self._outcome is None:
            self._outcome_error = exc
        if self._channel is not None:
            self._channel.close()

    def _on_exit(self, handle: ProcessHandle) -> None:
        if self._channel is not None:
            self._channel.drain_now()
            self._channel.close()
        handle.close_when_exited()
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        hooks, self._hooks = self._hooks, []
        for h in hooks:
            try:
                h.remove()
            except Exception:  # pragma: no cover - defensive
                pass

    async def join(self, timeout: float | None = None) -> int | None:
        """Wait until the child has exited.

        Args:
            timeout: seconds to wait at most (None: no limit).

        Returns:
            The exit code, or None when *timeout* passed first (as
            :meth:`multiprocessing.Process.join` leaves ``exitcode`` None).

        Raises:
            RuntimeStateError: the child was not started.
        """
        if self._handle is None:
            raise RuntimeStateError("join() before start()")
        return await self._handle.wait(timeout)

    async def result(self, timeout: float | None = None) -> T:
        """Wait for the child and return what the target returned.

        Raises:
            RemoteError: the target raised; the original exception is chained
                as ``__cause__`` when it could be unpickled, and
                ``remote_traceback`` holds the child's traceback.
            ChildProcessFailed: the child died without reporting (killed,
                ``os._exit``, a crash) or ``sys.exit`` with a non-zero code.
            TimeoutError: *timeout* passed first.
        """
        code = await self.join(timeout)
        if code is None:
            raise TimeoutError(f"child {self.pid} still running after {timeout} s")
        outcome = self._outcome
        if outcome is None and code == 1 and (script := main_without_guard()) is not None:
            raise ChildProcessFailed(str(NoMainGuard(script)))
        if outcome is None:
            err = ChildProcessFailed(
                f"child process {self.name} (pid {self.pid}) ended without a result: "
                + describe_returncode(code)
            )
            if self._outcome_error is not None:
                raise err from self._outcome_error
            raise err
        kind, value = outcome
        if kind == _OK:
            return value  # type: ignore[no-any-return]
        if kind == _EXIT:
            if value:
                raise ChildProcessFailed(
                    f"child process {self.name} (pid {self.pid}) called sys.exit({value})"
                )
            return None  # type: ignore[return-value]
        original, remote = rebuild_exception(value, f"child process {self.pid}")
        if original is not None:
            raise remote from original
        raise remote

    def terminate(self) -> None:
        """Send SIGTERM to the child's process group."""
        if self._handle is not None:
            self._handle.terminate()

    def kill(self) -> None:
        """Send SIGKILL to the child's process group."""
        if self._handle is not None:
            self._handle.kill()

    def send_signal(self, sig: int) -> None:
        """Send *sig* to the child's process group."""
        if self._handle is not None:
            self._handle.send_signal(sig)

    async def aclose(self) -> None:
        """Stop the child if it runs (SIGTERM, grace, SIGKILL) and reap it."""
        self._closed = True
        if self._handle is not None:
            await self._handle.stop(self.grace)
        self._remove_hooks()

    async def __aenter__(self) -> ChildProcess[T]:
        if self._handle is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and not self.daemon and self._handle is not None:
            try:
                await self._handle.wait()
            finally:
                await self.aclose()
        else:
            await self.aclose()

    def __repr__(self) -> str:
        state = (
            "initial"
            if self._handle is None
            else ("started" if self.exitcode is None else describe_returncode(self.exitcode))
        )
        return f"<ChildProcess name={self.name!r} pid={self.pid} {state}>"


def iter_descendants(root: int | None = None) -> Iterable[int]:
    """Yield the pids of every live descendant of *root* (default: this process).

    Linux only (reads /proc); used by tests and leak checks.
    """
    root = os.getpid() if root is None else root
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(b")") + 2 :].split()
        parents.setdefault(int(rest[1]), []).append(int(entry))
    stack = [root]
    seen: set[int] = set()
    while stack:
        for child in parents.get(stack.pop(), ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return sorted(seen)
