"""Starting Python child processes, and watching them from the loop.

What every anycore child goes through, whatever it then runs (a ChildProcess
target, a pool worker, a manager server, a supervised program):

* the start method (:func:`default_context`): forkserver on Linux (the server
  is single-threaded, so forking it is safe however many threads the parent
  runs), spawn elsewhere; the fork server preloads anycore's child modules, so
  a new child starts in about a millisecond instead of importing them again;
* the main-module guard: a script without ``if __name__ == "__main__":`` is
  imported again by the fork server and by spawned children, and would start
  processes again, forever.  Such a child exits at once
  (:func:`refuse_while_bootstrapping`) and the parent raises
  :class:`NoMainGuard`;
* ``die_with_parent``: the spawn guard (``_proc._spawn``) watches the child
  and the start method's helpers; a forkserver child also sets
  PR_SET_PDEATHSIG against the fork server;
* the child's side of a life: its own process group, SIGTERM raised as an
  exception so ``finally`` blocks run, log records forwarded to the parent,
  and the exit-flush hooks run before it exits (``os._exit``, how
  multiprocessing ends a child, runs none);
* :class:`ProcessHandle`, a started :class:`multiprocessing.Process` watched
  through its sentinel (``add_reader`` on the fd: the loop never blocks and
  nothing calls ``waitpid(-1)``), with SIGTERM-grace-SIGKILL stopping of its
  process group and its leftovers killed when it exits.

What crosses between the processes is ``_wire``'s.

Rejected: asyncio's subprocess API (it runs commands, not callables, and
uvloop's is slow); the ``fork`` start method by default (it deadlocks when the
parent has threads, cpython#100229); PR_SET_PDEATHSIG for spawn children (they
are started from a worker thread, and the kernel signals the child when that
*thread* ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._core._state import run_exit_flush
from .._proc._spawn import forget_with_parent, set_parent_death_signal, watch_with_parent
from ..errors import ChildProcessFailed

__all__ = [
    "NoMainGuard",
    "ProcessHandle",
    "child_prologue",
    "default_context",
    "die_of_sigterm",
    "log_forwarding_config",
    "main_without_guard",
    "refuse_while_bootstrapping",
    "run_awaitable",
    "run_child_body",
]

T = TypeVar("T")
log = logging.getLogger("anycore.child")


# -- start method -------------------------------------------------------------


def default_context(method: str | None = None) -> Any:
    """Return the multiprocessing context anycore starts children with.

    Args:
        method: ``"forkserver"``, ``"spawn"`` or ``"fork"``; None picks
            forkserver on Linux and spawn elsewhere.

    Returns:
        A :class:`multiprocessing.context.BaseContext`.
    """
    import multiprocessing

    if method is None:
        method = "forkserver" if sys.platform.startswith("linux") else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        _preload_forkserver()
    return ctx


def _preload_forkserver() -> None:
    # Modules imported once by the fork server are inherited by every child
    # it forks, so a new worker starts in about a millisecond instead of
    # importing anycore again.  Only effective before the server starts;
    # '__main__' (multiprocessing's default) is kept.
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is not None:
        return
    wanted = ["anycore._workers._child", "anycore._workers._pool_processes"]
    try:
        import cloudpickle  # noqa: F401

        wanted.append("cloudpickle")
    except ImportError:
        pass
    current = list(getattr(server, "_preload_modules", ["__main__"]))
    for mod in wanted:
        if mod not in current:
            current.append(mod)
    forkserver.set_forkserver_preload(current)


# -- the main-module guard and die_with_parent --------------------------------


class NoMainGuard(ChildProcessFailed):
    """Processes were started while a child imported the main script."""

    def __init__(self, script: str | None) -> None:
        where = f"the script {script!r}" if script else "the main module"
        super().__init__(
            f"{where} starts processes (a WorkerPool or ChildProcess) when it is "
            "imported: the fork server and spawned children import it again, "
            'which starts them again. Put that code under `if __name__ == "__main__":` '
            "(see docs/pools.md, 'The main-module guard')"
        )


def refuse_while_bootstrapping() -> None:
    """End this process with one line on stderr when called while
    multiprocessing imports ``__main__`` in a fork server or a spawned child
    (a script without the guard): it would start processes again, forever.
    The parent raises :class:`NoMainGuard` when it sees the child die."""
    import multiprocessing.process

    if getattr(multiprocessing.process.current_process(), "_inheriting", False):
        with contextlib.suppress(Exception):
            sys.stderr.write(
                f"anycore: child process {os.getpid()} exits: its main script has no "
                '`if __name__ == "__main__":` guard\n'
            )
            sys.stderr.flush()
        os._exit(1)


def main_without_guard() -> str | None:
    """The main script's path when it has no top-level ``if __name__ ==
    "__main__":`` (then children importing it start processes again), else None."""
    import ast

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return None
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if "__name__" in test and "__main__" in test:
                return None
    return path


def _watch_start_method_helpers(context: Any) -> int | None:
    """Start the fork server now and have the guard watch it and the resource
    tracker; return the pid a forkserver child's parent must have (its
    PR_SET_PDEATHSIG applies to it), or None for the other start methods.

    A spawn or fork child is not given PR_SET_PDEATHSIG: it is started from a
    worker thread, and the kernel signals the child when that *thread* ends.
    The guard covers it.
    """
    if context.get_start_method() != "forkserver":
        return None
    from multiprocessing import forkserver, resource_tracker

    forkserver.ensure_running()
    server_pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    tracker_pid = getattr(resource_tracker._resource_tracker, "_pid", None)
    for pid in (server_pid, tracker_pid):
        if isinstance(pid, int) and pid not in _WATCHED_HELPERS:
            _WATCHED_HELPERS.add(pid)
            watch_with_parent(pid, group=False)
    return server_pid if isinstance(server_pid, int) else None


_WATCHED_HELPERS: set[int] = set()


def _die_with_parent_entry(
    expected_parent: int | None, target: Callable[..., object], args: tuple[Any, ...]
) -> object:
    """Child side of ``die_with_parent``: PR_SET_PDEATHSIG, then the target."""
    if expected_parent is not None:
        set_parent_death_signal(expected_parent)
    return target(*args)


# -- the child side: prologue, body, exit -------------------------------------

# The exit-flush registry (register_exit_flush / run_exit_flush) lives in the
# leaf module _core._state, so that logging registers its hooks without
# loading this module.


class _Terminated(SystemExit):
    """Raised in a child by SIGTERM so that ``finally`` blocks and hooks run."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Terminated(-signal.SIGTERM)


def child_prologue(new_process_group: bool, log_forwarding: dict[str, Any] | None = None) -> None:
    """Set a freshly started child up: own process group, SIGTERM handling,
    and its log records sent to the parent's handlers (see
    :func:`log_forwarding_config`)."""
    if new_process_group:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
    signal.signal(signal.SIGTERM, _on_sigterm)
    if log_forwarding is not None:
        from ..logging._children import install_child_forwarding

        install_child_forwarding(log_forwarding)


def log_forwarding_config() -> dict[str, Any] | None:
    """Parent side: where a new child should send its log records.

    A forkserver or spawn child starts with no logging configuration, so its
    records would reach nobody.  When this process's root logger has handlers,
    children forward their records to it (anycore.logging's listener, started
    on first use); otherwise there is nothing to forward to and no listener.
    """
    if not logging.getLogger().handlers:
        return None
    from ..logging._children import child_logging_config

    return child_logging_config()


def die_of_sigterm() -> None:
    """Flush, then end this process as SIGTERM would have (exitcode -15)."""
    run_exit_flush()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    os._exit(128 + signal.SIGTERM)  # pragma: no cover - the signal ends us first


def run_child_body(sock: socket.socket, body: Callable[[], T]) -> T:
    """Run the body of a child process that talks to its parent over ``sock``.

    The socket is closed when the body ends; a SIGTERM received meanwhile
    (``_Terminated``) ends the process as SIGTERM would, after the exit-flush
    hooks; otherwise the hooks run and the body's result is returned.
    """
    try:
        try:
            result = body()
        finally:
            try:
                sock.close()
            except OSError:
                pass
    except _Terminated:
        die_of_sigterm()
        raise  # pragma: no cover - die_of_sigterm does not return
    run_exit_flush()
    return result


def run_awaitable(value: Awaitable[T]) -> T:
    """Run *value* to its end in a new event loop of this thread.

    How a coroutine function runs where there is no loop: a ChildProcess
    target, a job of a pool's thread or process worker.
    """

    async def main() -> T:
        return await value

    return asyncio.run(main())


# -- a started process, watched from the loop ---------------------------------


def _signal_group(pid: int, sig: int, group: bool) -> None:
    if group:
        try:
            os.killpg(pid, sig)
            return
        except (ProcessLookupError, PermissionError):
            pass  # the child has not made its group yet: signal it alone
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class ProcessHandle:
    """A started :class:`multiprocessing.Process`, watched through its sentinel.

    Create with :meth:`start`.  :attr:`exited` resolves with the exit code as
    soon as the sentinel fd is readable (``add_reader``); nothing blocks the
    loop and nothing reaps other processes' children.
    """

    def __init__(self, process: Any, group: bool) -> None:
        self.process = process
        self.pid: int = process.pid
        self.group = group
        self.exitcode: int | None = None
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = self._loop.create_future()
        self._sentinel: int = process.sentinel
        self._watching = True
        self._retries = 0
        self._exit_callbacks: list[Callable[[ProcessHandle], None]] = []
        self._loop.add_reader(self._sentinel, self._on_sentinel)

    @classmethod
    async def start(
        cls,
        context: Any,
        target: Callable[..., object],
        args: tuple[Any, ...],
        *,
        name: str | None,
        daemon: bool,
        group: bool,
        die_with_parent: bool = False,
    ) -> ProcessHandle:
        """Start ``target(*args)`` in a child process.

        With ``die_with_parent`` the child (its process group when ``group``)
        is SIGKILLed if this process dies: the spawn guard watches it, and a
        forkserver child also gets PR_SET_PDEATHSIG against the fork server,
        which the guard watches too (so does the resource tracker).

        ``Process.start()`` talks to the fork server (or execs a new
        interpreter), which can take a while the first time: it runs in a
        worker thread and is shielded from cancellation so that a started
        child is never lost; a cancelled caller's child is killed.
        """
        import anyio

        refuse_while_bootstrapping()

        def create() -> Any:
            try:
                return start_process()
            except Exception as exc:
                script = main_without_guard()
                if script is None:
                    raise
                raise NoMainGuard(script) from exc

        def start_process() -> Any:
            if not die_with_parent:
                process = context.Process(target=target, args=args, name=name, daemon=daemon)
            else:
                expected = _watch_start_method_helpers(context)
                process = context.Process(
                    target=_die_with_parent_entry,
                    args=(expected, target, args),
                    name=name,
                    daemon=daemon,
                )
            process.start()
            if die_with_parent:
                watch_with_parent(process.pid, group=group)
            return process

        # Wait for the start whatever happens: a native Task.cancel() goes
        # through anyio's shields, and a caller that then closed the sockets
        # it passed would break the start half-way (the fork server, handed a
        # connection without its fds, dies of it - and takes its children along).
        starting = asyncio.get_running_loop().create_task(anyio.to_thread.run_sync(create))
        cancelled: BaseException | None = None
        while not starting.done():
            try:
                await asyncio.shield(starting)
            except asyncio.CancelledError as exc:
                cancelled = exc
        process = starting.result()
        handle = cls(process, group)
        if die_with_parent:
            handle.add_exit_callback(lambda h: forget_with_parent(h.pid))
        try:
            if cancelled is not None:
                raise cancelled
            await asyncio.sleep(0)
        except BaseException:
            handle.kill()
            handle.close_when_exited()
            raise
        return handle

    def add_exit_callback(self, fn: Callable[[ProcessHandle], None]) -> None:
        """Call *fn(handle)* on the loop when the process has exited."""
        if self.exited.done():
            self._loop.call_soon(fn, self)
        else:
            self._exit_callbacks.append(fn)

    def _on_sentinel(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._sentinel)
            self._watching = False
        code = self.process._popen.poll()
        if code is None:
            # spawn/fork: the sentinel pipe closes a moment before the child
            # becomes reapable.  Retry shortly, bounded.
            self._retries += 1
            if self._retries > 2000:
                log.warning("child %d: exit status unavailable; assuming 255", self.pid)
                code = 255
            else:
                self._loop.call_later(min(0.0005 * self._retries, 0.05), self._on_sentinel)
                return
        self._set_exit(code)

    def _set_exit(self, code: int) -> None:
        if self.exited.done():
            return
        if self.group:
            # What the child left in its process group (a `sleep` it started,
            # say) goes with it: nothing outlives a worker or a ChildProcess.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self.exitcode = code
        self.exited.set_result(code)
        callbacks, self._exit_callbacks = self._exit_callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                log.exception("exit callback of child %d failed", self.pid)

    def is_alive(self) -> bool:
        """True until the exit has been observed."""
        return self.exitcode is None

    def send_signal(self, sig: int) -> None:
        """Send *sig* to the child (and its process group) if it still runs."""
        if self.exitcode is None:
            _signal_group(self.pid, sig, self.group)

    def terminate(self) -> None:
        """Send SIGTERM (the child flushes its hooks and exits with -15)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL."""
        self.send_signal(signal.SIGKILL)

    async def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the exit; return the exit code, or None on timeout."""
        if self.exitcode is not None:
            return self.exitcode
        try:
            return await asyncio.wait_for(asyncio.shield(self.exited), timeout)
        except TimeoutError:
            return None

    async def stop(self, grace: float) -> int:
        """SIGTERM, wait up to *grace* seconds, SIGKILL, wait; shielded.

        Returns:
            The exit code.
        """
        import anyio

        with anyio.CancelScope(shield=True):
            if self.exitcode is None:
                self.terminate()
                code = await self.wait(grace)
                if code is not None:
                    return code
                self.kill()
                code = await self.wait(30.0)
                if code is None:  # pragma: no cover - SIGKILL of a D-state process
                    log.error("child %d ignored SIGKILL for 30 s", self.pid)
                    return -signal.SIGKILL
        assert self.exitcode is not None
        return self.exitcode

    def close_when_exited(self) -> None:
        """Release the process object's fds once it has exited."""
        if self.exited.done():
            self._release()
        else:
            self.add_exit_callback(lambda _h: self._release())

    def _release(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._sentinel)
            self._watching = False
        try:
            self.process.close()
        except ValueError:
            pass
