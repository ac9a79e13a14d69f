# Async child processes: the subprocess.Popen surface on the running loop.
#
# What this module owns: ``Process`` (an async context manager wrapping one child),
# ``communicate``, the run / call / check_call / check_output helpers and the
# registration of live processes with the runtime.  Spawning and exit watching live in
# ``_spawn`` (posix_spawn or fork_exec, a pidfd per child, never waitpid(-1)); the
# pipe streams and communicate's engine in ``_pipes``.
#
# Design choices:
#   * A process has ended only when it exited and its pipes closed (asyncio's
#     _try_finish, Twisted's processEnded).  communicate() waits for both, but once
#     the child itself exited, a grandchild holding a pipe gets ``drain_timeout``
#     before its group is killed: it cannot hang the caller.
#   * Children start in their own process group by default.  Closing the scope
#     (normally, on error, on cancellation or timeout) sends SIGTERM to the group,
#     waits ``grace_period``, sends SIGKILL, then SIGKILLs whatever is left of the
#     group and reaps the child - shielded from cancellation.  The child stays a
#     zombie until then (see _spawn), so the group id cannot be reused under us.
#   * Rejected: asyncio.create_subprocess_exec (uvloop's path is 4x slower and rejects
#     process_group/user/group/umask), anyio.open_process (goes through the same),
#     one task per pipe in the common no-pipe case (pure overhead for `run`).
from __future__ import annotations

import asyncio
import fcntl
import grp
import os
import pwd
import signal
import sys
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import IO, Any, Literal, Self, TypeAlias

import anyio

from .._core._backend import asyncio_loop
from .._core._runtime import Phase, Runtime, current_runtime
from ..errors import CalledProcessError, ExecutableNotFound, RuntimeStateError, TimeoutExpired
from ._pipes import (
    _READ_SIZE as _READ_SIZE,
    DEFAULT_LIMIT,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_OUTPUT,
    ProcessReader,
    ProcessWriter,
    TextProcessReader,
    _communicate,
    _run_to_end,
)
from ._spawn import (
    ExitWatcher,
    ProcessStatus,
    forget_executable,
    reap,
    resolve_executable,
    spawn,
)
from ._tree import TREE_SUPPORTED, KeeperLink, keeper_argv, tree_unsupported

__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "CompletedProcess",
    "Process",
    "ProcessReader",
    "ProcessStatus",
    "ProcessWriter",
    "TextProcessReader",
    "call",
    "check_call",
    "check_output",
    "open_process",
    "run_process",
]

# Same values as subprocess's, so subprocess.PIPE works too.
PIPE = -1
STDOUT = -2
DEVNULL = -3

StrOrBytesPath: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"
Redirect: TypeAlias = "int | IO[Any] | None"
Args: TypeAlias = "StrOrBytesPath | Sequence[StrOrBytesPath]"


# Output pipes are grown to this size where the OS allows (Linux F_SETPIPE_SZ): a
# quarter as many wake-ups per megabyte as the 64 KiB default, and still a bound.
_PIPE_SIZE = 256 * 1024 if hasattr(fcntl, "F_SETPIPE_SZ") else 0


def _grow_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:  # over /proc/sys/fs/pipe-max-size or the user's pipe quota
        pass


def _running_loop(what: str) -> asyncio.AbstractEventLoop:
    """The running asyncio loop; a clear error under trio or outside a loop."""
    return asyncio_loop(
        f"anycore {what}",
        "on trio run programs with anyio.run_process() or anyio.open_process()",
    )


# -- the runtime registry ---------------------------------------------------------------


def _current_runtime() -> Runtime | None:
    return current_runtime()


class _Registry:
    """Live processes of one runtime: one shutdown step and one force-exit hook."""

    def __init__(self, rt: Runtime) -> None:
        self.live: set[_Killable] = set()
        rt.add_shutdown_step(Phase.PROCESSES, "anycore.subprocess", self._stop_all)
        rt.add_force_exit_hook(self._kill_all)

    async def _stop_all(self) -> None:
        procs = list(self.live)
        if procs:
            await asyncio.gather(*(p.aclose() for p in procs), return_exceptions=True)

    def _kill_all(self) -> None:
        for p in list(self.live):
            p._kill_now()


class _Killable:
    async def aclose(self) -> None:
        raise NotImplementedError

    def _kill_now(self) -> None:
        raise NotImplementedError


_registries: weakref.WeakKeyDictionary[Runtime, _Registry] = weakref.WeakKeyDictionary()


def _register(proc: _Killable) -> _Registry | None:
    rt = _current_runtime()
    if rt is None:
        return None
    reg = _registries.get(rt)
    if reg is None:
        reg = _registries[rt] = _Registry(rt)
    reg.live.add(proc)
    return reg


# -- argument normalisation -------------------------------------------------------------


def _fsstr(value: StrOrBytesPath, what: str) -> str:
    try:
        text = os.fsdecode(value)
    except TypeError:
        raise TypeError(
            f"{what} must be str, bytes or a path, not {type(value).__name__}"
        ) from None
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL byte: {text!r}")
    return text


def _normalize_args(args: Args, shell: bool, executable: StrOrBytesPath | None) -> list[str]:
    if isinstance(args, (str, bytes, os.PathLike)):
        seq: list[StrOrBytesPath] = [args]
    else:
        seq = list(args)
    argv = [_fsstr(a, "an argument") for a in seq]
    if shell:
        sh = "/bin/sh" if executable is None else _fsstr(executable, "executable")
        if not argv:
            raise ValueError("shell=True needs a command")
        return [sh, "-c", *argv]
    if not argv:
        raise ValueError("args must name a program")
    return argv


def _normalize_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    if env is None:
        return None
    out: dict[str, str] = {}
    for key, value in env.items():
        k, v = _fsstr(key, "an environment name"), _fsstr(value, "an environment value")
        if "=" in k or not k:
            raise ValueError(f"illegal environment variable name: {k!r}")
        out[k] = v
    return out


def _redirect(value: Redirect, name: str) -> int | None:
    """None (inherit), PIPE, DEVNULL, STDOUT or a descriptor >= 0."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be PIPE, DEVNULL, a file or a descriptor, not a bool")
    if isinstance(value, int):
        if value == STDOUT and name != "stderr":
            raise ValueError("STDOUT is only valid for stderr")
        if value < 0 and value not in (PIPE, DEVNULL, STDOUT):
            raise ValueError(f"invalid {name}: {value}")
        return value
    fileno = getattr(value, "fileno", None)
    if fileno is None:
        raise TypeError(f"{name} must be PIPE, DEVNULL, STDOUT, a file or a descriptor")
    fd = fileno()
    if not isinstance(fd, int) or fd < 0:
        raise ValueError(f"invalid {name} descriptor: {fd!r}")
    return fd


def _uid(user: str | int | None) -> int | None:
    if user is None:
        return None
    if isinstance(user, int):
        if user < 0:
            raise ValueError(f"invalid user id {user}")
        return user
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ValueError(f"no such user: {user!r}") from None


def _gid(group: str | int | None) -> int | None:
    if group is None:
        return None
    if isinstance(group, int):
        if group < 0:
            raise ValueError(f"invalid group id {group}")
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no such group: {group!r}") from None


class _NotPipedError(RuntimeStateError, AttributeError):
    """A stream of a process that is not a pipe was used (also an AttributeError,
    so ``hasattr`` and ``getattr(..., default)`` keep working)."""


class _NotPiped:
    """What ``proc.stdin`` / ``stdout`` / ``stderr`` hold when that stream is not
    a pipe (or the process is not started yet): falsy like ``None``, and any use
    - iterating it, reading, writing - raises a :class:`RuntimeStateError` that
    says so."""

    __slots__ = ("_name", "_piped")

    def __init__(self, name: str, piped: bool) -> None:
        self._name = name
        self._piped = piped

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<proc.{self._name}: {'not started' if self._piped else 'not a pipe'}>"

    def _error(self) -> _NotPipedError:
        if self._piped:
            return _NotPipedError(f"proc.{self._name} is a pipe once the process is started")
        use = "write to" if self._name == "stdin" else "read"
        return _NotPipedError(
            f"proc.{self._name} is not a pipe: start the process with {self._name}=PIPE to {use} it"
        )

    def __aiter__(self) -> Any:
        raise self._error()

    def __iter__(self) -> Any:
        raise self._error()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise self._error()


def _not_piped(name: str, how: int | None) -> Any:
    return _NotPiped(name, how == PIPE)


# -- Process -------------------------------------------------------------------------------


class Process(_Killable):
    """One child process; an async context manager.

    ``async with Process([...]) as proc`` starts the program and, when the block
    ends for any reason, stops it: SIGTERM to its process group, ``grace_period``
    seconds, SIGKILL, leftovers of the group killed, pipes closed, child reaped.
    The constructor validates everything (bad arguments fail before anything is
    spawned); :meth:`start` (or entering the block) spawns.

    Args:
        args: a sequence (program and arguments) or, with ``shell=True``, a
            command string for ``/bin/sh -c``.
        stdin, stdout, stderr: ``None`` (inherit), :data:`PIPE`, :data:`DEVNULL`,
            :data:`STDOUT` (stderr only: merge into stdout), a file object or a
            descriptor.
        shell: run ``args`` through ``/bin/sh -c`` (or ``executable``).
        executable: the program to execute instead of ``args[0]``.
        cwd, env: working directory and environment of the child.
        close_fds: close every descriptor but 0-2 and ``pass_fds`` in the child.
        pass_fds: descriptors to keep open in the child.
        start_new_session: run the child in a new session (``setsid``).
        process_group: ``0`` (default): the child leads a new process group;
            ``None``: it stays in ours; ``N``: it joins group ``N``.
        user, group, extra_groups, umask: credentials and umask of the child.
        restore_signals: reset SIGPIPE / SIGXFSZ to their defaults in the child.
        text, universal_newlines, encoding, errors: text mode for the pipes.
        limit: bytes held per output pipe before reading pauses (backpressure).
        max_line_length: the longest line the readers return.
        split_long_lines: deliver over-long lines in pieces instead of raising
            :class:`~anycore.errors.FrameTooLarge`.
        grace_period: seconds between SIGTERM and SIGKILL when stopping.
        drain_timeout: how long pipes may stay open after the child exited
            (a grandchild holding them) before the group is killed.
        kill_group: when closing, also SIGKILL what is left of the child's group.
        limiter: an :class:`anyio.CapacityLimiter` bounding how many processes
            sharing it run at once (start waits for a token).
        register: under an anycore runtime, stop the process in the runtime's
            ``Phase.PROCESSES`` shutdown step and SIGKILL its group on a forced
            exit.  ``False`` leaves it out of both: its owner (a supervisor
            stopping programs in dependency order, say) takes responsibility
            for stopping it, forced exits included.
        die_with_parent: SIGKILL the child, and its process group when it leads
            one (the default), if this process dies - even by SIGKILL or the
            OOM killer.  A small guard process started with the first such
            child does it (see docs/subprocess.md for what it cannot catch: a
            grandchild that leaves the group with ``setsid``).
        kill_tree: (Linux) the program runs under a small keeper process that
            is a child subreaper: nothing the program starts can leave its
            tree, not even with ``setsid`` or a double fork.  When the program
            exits (or is stopped), what is left of the tree gets SIGTERM,
            ``grace_period`` seconds, then SIGKILL; the exit status is the
            program's.  Implies ``die_with_parent`` for the whole tree.  Costs
            one short-lived Python start (~15 ms) per spawn.

    Raises:
        TypeError, ValueError: invalid arguments (nothing was spawned).
        ExecutableNotFound: at start, the program does not exist.
    """

    def __init__(
        self,
        args: Args,
        *,
        stdin: Redirect = None,
        stdout: Redirect = None,
        stderr: Redirect = None,
        shell: bool = False,
        executable: StrOrBytesPath | None = None,
        cwd: StrOrBytesPath | None = None,
        env: Mapping[str, str] | None = None,
        close_fds: bool = True,
        pass_fds: Iterable[int] = (),
        start_new_session: bool = False,
        process_group: int | None = 0,
        user: str | int | None = None,
        group: str | int | None = None,
        extra_groups: Iterable[str | int] | None = None,
        umask: int = -1,
        restore_signals: bool = True,
        text: bool | None = None,
        universal_newlines: bool | None = None,
        encoding: str | None = None,
        errors: str | None = None,
        limit: int = DEFAULT_LIMIT,
        max_line_length: int = DEFAULT_MAX_LINE,
        split_long_lines: bool = False,
        grace_period: float = 5.0,
        drain_timeout: float = 1.0,
        kill_group: bool = True,
        limiter: anyio.CapacityLimiter | None = None,
        register: bool = True,
        die_with_parent: bool = False,
        kill_tree: bool = False,
    ) -> None:
        if kill_tree and not TREE_SUPPORTED:
            raise tree_unsupported()
        self.args = args
        self._argv = _normalize_args(args, shell, executable)
        self._executable = (
            self._argv[0] if (shell or executable is None) else _fsstr(executable, "executable")
        )
        self._env = _normalize_env(env)
        self._cwd = None if cwd is None else _fsstr(cwd, "cwd")
        if self._cwd is not None and not os.path.isdir(self._cwd):
            kind = FileNotFoundError if not os.path.exists(self._cwd) else NotADirectoryError
            raise kind(f"cwd is not a directory: {self._cwd!r}")
        self._stdin = _redirect(stdin, "stdin")
        self._stdout = _redirect(stdout, "stdout")
        self._stderr = _redirect(stderr, "stderr")
        self._pass_fds = tuple(sorted({int(fd) for fd in pass_fds}))
        if any(fd < 0 for fd in self._pass_fds):
            raise ValueError("pass_fds must be descriptors >= 0")
        self._close_fds = bool(close_fds)
        if process_group is not None and (not isinstance(process_group, int) or process_group < 0):
            raise ValueError(f"process_group must be None or >= 0, not {process_group!r}")
        if not isinstance(umask, int) or umask < -1 or umask > 0o777:
            raise ValueError(f"invalid umask {umask!r}")
        self._start_new_session = bool(start_new_session)
        self._process_group = process_group
        self._uid = _uid(user)
        self._gid = _gid(group)
        self._extra_groups = (
            None
            if extra_groups is None
            else [g for g in (_gid(x) for x in extra_groups) if g is not None]
        )
        self._umask = umask
        self._restore_signals = restore_signals
        self._text = bool(text or universal_newlines or encoding or errors)
        self._encoding = encoding or ("utf-8" if self._text else None)
        self._errors = errors or "strict"
        if limit <= 0 or max_line_length <= 0:
            raise ValueError("limit and max_line_length must be positive")
        if grace_period < 0 or drain_timeout < 0:
            raise ValueError("grace_period and drain_timeout must be >= 0")
        self._limit = limit
        self._max_line = max_line_length
        self._split = split_long_lines
        self.grace_period = grace_period
        self.drain_timeout = drain_timeout
        self._kill_group = kill_group
        self._limiter = limiter
        self._use_runtime = register
        self._die_with_parent = bool(die_with_parent)
        self._kill_tree = bool(kill_tree)
        self._keeper: KeeperLink | None = None

        self.pid: int = -1
        self._child_pid = -1  # the process we spawned and reap: the program, or its keeper
        # Until spawn (and for good when not a PIPE): a falsy placeholder whose
        # use says why, instead of None's "'async for' requires ... NoneType".
        self.stdin: ProcessWriter | None = _not_piped("stdin", self._stdin)
        self.stdout: ProcessReader | TextProcessReader | None = _not_piped("stdout", self._stdout)
        self.stderr: ProcessReader | TextProcessReader | None = _not_piped("stderr", self._stderr)
        self._status: ProcessStatus | None = None
        self._exit: asyncio.Future[ProcessStatus] | None = None
        self._waiters: list[asyncio.Future[ProcessStatus]] = []
        self._loop: Any = None  # set at spawn
        self._watcher: ExitWatcher | None = None
        self._state: Literal["new", "running", "closing", "closed"] = "new"
        self._reaped = False
        self._autoreap = False
        self._registry: _Registry | None = None
        self._comm: asyncio.Task[tuple[Any, Any]] | None = None
        self._captured: list[bytearray] = [bytearray(), bytearray()]

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> Self:
        """Spawn the child (waits for a ``limiter`` token first).

        Returns:
            this process.

        Raises:
            ExecutableNotFound: the program does not exist or is not executable.
            OSError: the kernel refused (e.g. permissions for ``user``).
            RuntimeStateError: already started, or no event loop is running.
            BackendNotSupported: called from a trio task (use anyio's process API).
        """
        if self._state != "new":
            raise RuntimeStateError("the process was already started")
        loop = _running_loop("processes")
        self._state = "running"
        if self._limiter is not None:
            await self._limiter.acquire_on_behalf_of(self)
        try:
            self._spawn(loop)
        except BaseException:
            self._state = "closed"
            if self._limiter is not None:
                self._limiter.release_on_behalf_of(self)
            raise
        if self._keeper is not None:
            await self._await_program()
        if self._use_runtime:
            self._registry = _register(self)
        return self

    def _spawn(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            try:
                self._spawn_once(
                    loop, resolve_executable(self._executable, self._env, verify=False)
                )
            except ExecutableNotFound:
                # A cached PATH lookup may be stale (the program moved): look again once.
                if not forget_executable(self._executable, self._env):
                    raise
                self._spawn_once(loop, resolve_executable(self._executable, self._env))
        except ExecutableNotFound as exc:
            name = self._executable
            if isinstance(self.args, (str, bytes)) and len(self._argv) == 1 and " " in name:
                words = name.split()
                hint = f"a string is one program name: pass a list, {words!r}, or shell=True"
                raise ExecutableNotFound(name, hint) from exc
            raise

    async def _await_program(self) -> None:
        # The keeper reports the program's pid once it has exec'd it.
        assert self._keeper is not None
        assert self._exit is not None
        try:
            self.pid = await self._keeper.program_pid(self._executable)
        except BaseException as exc:
            self._keeper.close()  # end of file: the keeper kills whatever it started
            if not isinstance(exc, asyncio.CancelledError):
                with anyio.CancelScope(shield=True):
                    await asyncio.wait({self._exit}, timeout=5.0)
            self._finish()
            raise

    def _spawn_once(self, loop: asyncio.AbstractEventLoop, executable: str) -> None:
        parent_fds: list[int] = []  # our ends, kept
        child_fds: list[int] = []  # the child's ends, closed after spawn
        fds = [-1, -1, -1]
        stderr_to_stdout = False
        try:
            for i, how in enumerate((self._stdin, self._stdout, self._stderr)):
                if how is None:
                    continue
                if how == PIPE:
                    r, w = os.pipe2(os.O_CLOEXEC)
                    if i and _PIPE_SIZE:
                        _grow_pipe(r)
                    mine, theirs = (w, r) if i == 0 else (r, w)
                    parent_fds.append(mine)
                    child_fds.append(theirs)
                    fds[i] = theirs
                elif how == DEVNULL:
                    fd = os.open(
                        os.devnull, (os.O_RDONLY if i == 0 else os.O_WRONLY) | os.O_CLOEXEC
                    )
                    child_fds.append(fd)
                    fds[i] = fd
                elif how == STDOUT:
                    stderr_to_stdout = True
                else:
                    fds[i] = how
            argv, pass_fds = self._argv, self._pass_fds
            if self._kill_tree:
                self._keeper = keeper = KeeperLink()
                argv = keeper_argv(
                    *keeper.child_fds(),
                    executable=executable,
                    argv=self._argv,
                    start_new_session=self._start_new_session,
                    process_group=self._process_group,
                    restore_signals=self._restore_signals,
                    grace=self.grace_period,
                )
                executable = sys.executable
                pass_fds = (*pass_fds, *keeper.child_fds())
            pid = spawn(
                argv,
                executable,
                env=self._env,
                stdin=fds[0],
                stdout=fds[1],
                stderr=fds[2],
                stderr_to_stdout=stderr_to_stdout,
                cwd=self._cwd,
                close_fds=self._close_fds,
                pass_fds=pass_fds,
                # A keeper stays in our group (driven by its pipe, it ignores a
                # terminal's signals) and applies the group options to the program.
                start_new_session=self._start_new_session and not self._kill_tree,
                process_group=None if self._kill_tree else self._process_group,
                uid=self._uid,
                gid=self._gid,
                extra_groups=self._extra_groups,
                umask=self._umask,
                restore_signals=self._restore_signals,
                die_with_parent=self._die_with_parent and not self._kill_tree,
            )
        except BaseException:
            for fd in parent_fds:
                os.close(fd)
            if self._keeper is not None:
                self._keeper.close()
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
            if self._keeper is not None:
                self._keeper.close_child_ends()
        self._child_pid = pid
        if self._keeper is None:
            self.pid = pid
        self._loop = loop
        self._exit = loop.create_future()
        self._watcher = ExitWatcher(loop, pid, self._on_exit)
        it = iter(parent_fds)
        if self._stdin == PIPE:
            self.stdin = ProcessWriter(loop, next(it), self._encoding, self._errors)
        for attr, how in (("stdout", self._stdout), ("stderr", self._stderr)):
            if how == PIPE:
                raw = ProcessReader(
                    loop,
                    next(it),
                    attr,
                    limit=self._limit,
                    max_line_length=self._max_line,
                    split_long_lines=self._split,
                )
                reader: ProcessReader | TextProcessReader = raw
                if self._text:
                    assert self._encoding is not None
                    reader = TextProcessReader(raw, self._encoding, self._errors)
                setattr(self, attr, reader)

    def _on_exit(self, status: ProcessStatus) -> None:
        if self._keeper is not None:
            status = replace(status, pid=self.pid)  # the keeper exits as the program did
        self._status = status
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(status)
        # wait()'s own futures are woken directly: one loop iteration less than
        # awaiting shield(_exit), which matters at ~1,500 spawns/s.
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(status)
        if self._autoreap:
            self._reap()

    def _reap(self) -> None:
        if not self._reaped:
            self._reaped = True
            reap(self._child_pid)

    async def __aenter__(self) -> Self:
        if self._state == "new":
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the child if it still runs, close the pipes and reap it.

        SIGTERM to the group, ``grace_period``, SIGKILL; then SIGKILL to what is
        left of the group.  Shielded from cancellation (an outer cancel only
        shortens the grace period).  Idempotent.
        """
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        if self._state == "closing":
            # Another task is closing: wait for the exit it will bring about.
            if self._exit is not None and not self._exit.done():
                with anyio.CancelScope(shield=True):
                    await asyncio.wait({self._exit}, timeout=self.grace_period + 5)
            return
        self._state = "closing"
        if self.stdin:
            self.stdin.close()
        try:
            if self._status is None or (self._comm is not None and not self._comm.done()):
                with anyio.CancelScope(shield=True):
                    await self._stop()
        except asyncio.CancelledError:
            self._kill_now()
            self._finish()
            raise
        self._finish()

    async def _stop(self) -> None:
        if self._status is None:
            self.send_signal(signal.SIGTERM, group=self._leads_group and self._kill_group)
            assert self._exit is not None
            await asyncio.wait({self._exit}, timeout=self.grace_period)
            if self._status is None:
                self._kill_now()
                await asyncio.wait({self._exit}, timeout=5.0)
        comm = self._comm
        if comm is not None and not comm.done():
            # The group is dead or dying: give the pumps a bounded moment to drain.
            self._kill_leftovers()
            await asyncio.wait({comm}, timeout=self.drain_timeout)
            comm.cancel()
            await asyncio.wait({comm})

    def _finish(self) -> None:
        self._kill_leftovers()
        if self._keeper is not None:
            self._keeper.close()  # a keeper still running ends the tree at once
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream:
                stream.close()
        if self._comm is not None and not self._comm.done():
            self._comm.cancel()
        if self._status is not None:
            self._reap()
        else:
            self._autoreap = True  # the watcher reaps it when it finally exits
        if self._registry is not None:
            self._registry.live.discard(self)
            self._registry = None
        if self._limiter is not None:
            self._limiter.release_on_behalf_of(self)
            self._limiter = None
        self._state = "closed"

    @property
    def _leads_group(self) -> bool:
        return self._start_new_session or self._process_group == 0

    def _kill_leftovers(self) -> None:
        if self._kill_group and self._leads_group and not self._reaped and self.pid > 0:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _kill_now(self) -> None:
        if self._keeper is not None:
            self._keeper.kill_now()
        if self.pid > 0 and not self._reaped:
            self.send_signal(signal.SIGKILL, group=self._leads_group and self._kill_group)

    # -- Popen surface -------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        """Exit code, ``-signal`` when killed, ``None`` while running."""
        return None if self._status is None else self._status.returncode

    @property
    def status(self) -> ProcessStatus | None:
        """The decoded exit status, ``None`` while running."""
        return self._status

    @property
    def pgid(self) -> int | None:
        """The child's process group id when it leads its own group, else ``None``."""
        if self.pid > 0 and self._leads_group:
            return self.pid
        if self.pid > 0 and self._process_group:
            return self._process_group
        return None

    def poll(self) -> int | None:
        """The return code if the child has exited, else ``None`` (never blocks)."""
        return self.returncode

    async def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit; return its return code.

        Like :meth:`subprocess.Popen.wait`, this does not read the pipes: a child
        blocked on a full stdout never exits.  Use :meth:`communicate` then.

        Raises:
            TimeoutExpired: still running after ``timeout`` seconds (it keeps running).
            RuntimeStateError: the process was not started.
        """
        if self._status is not None:
            return self._status.returncode
        if self._exit is None:
            raise RuntimeStateError("the process was not started")
        if timeout is None:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                status: ProcessStatus = await waiter
            finally:
                if waiter in self._waiters:  # cancelled
                    self._waiters.remove(waiter)
            return status.returncode
        await asyncio.wait({self._exit}, timeout=timeout)
        if not self._exit.done():
            raise TimeoutExpired(self.args, timeout)
        return self._exit.result().returncode

    def send_signal(self, sig: int, group: bool = False) -> None:
        """Send ``sig`` to the child, or with ``group=True`` to its process group.

        Does nothing once the child was reaped (its pid may belong to another
        process by then).

        Raises:
            ValueError: ``group=True`` but the child shares this process's group.
        """
        if self.pid <= 0 or self._reaped:
            return
        if group:
            pgid = self.pgid
            if pgid is None:
                raise ValueError("the child has no process group of its own (process_group=None)")
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
            return
        if self._status is not None:
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self, group: bool = False) -> None:
        """SIGTERM to the child (or its group)."""
        self.send_signal(signal.SIGTERM, group)

    def kill(self, group: bool = False) -> None:
        """SIGKILL to the child (or its group)."""
        self.send_signal(signal.SIGKILL, group)

    async def communicate(
        self,
        input: bytes | str | None = None,
        timeout: float | None = None,
        *,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> tuple[Any, Any]:
        """Write ``input``, read stdout / stderr to the end, wait for the exit.

        All pipes are served concurrently (no deadlock with large input and
        output).  On timeout the child keeps running and a later call resumes
        where this one stopped, like Popen's.

        Returns:
            ``(stdout, stderr)``: bytes (str in text mode), ``None`` for a pipe that
            was not opened.

        Raises:
            TimeoutExpired: carrying the output read so far.
            OutputLimitExceeded: a stream exceeded ``max_output`` bytes.
            RuntimeStateError: the process was not started.
        """
        if self._exit is None:
            raise RuntimeStateError("the process was not started")
        return await _communicate(self, input, timeout, max_output)

    def _exit_futures(self) -> list[asyncio.Future[ProcessStatus]]:
        return [] if self._exit is None else [self._exit]

    def __repr__(self) -> str:
        return f"<Process pid={self.pid} args={self.args!r} status={self._status}>"


def open_process(args: Args, **kwargs: Any) -> Process:
    """Return a :class:`Process` to use as ``async with open_process(...) as proc``.

    Takes the same arguments as :class:`Process`.
    """
    return Process(args, **kwargs)


# -- run and friends ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompletedProcess:
    """The result of :func:`run_process` (like :class:`subprocess.CompletedProcess`).

    Attributes:
        args: the args the process was started with.
        returncode: exit code, or ``-signal``.
        stdout, stderr: captured output (``None`` when not captured).
        status: the decoded exit status.
        statuses: for a pipeline, the status of every stage in order.
    """

    args: Any
    returncode: int
    stdout: Any = None
    stderr: Any = None
    status: ProcessStatus | None = None
    statuses: tuple[ProcessStatus, ...] = ()

    def check_returncode(self) -> None:
        """Raise :class:`~anycore.errors.CalledProcessError` if the exit was not 0."""
        if self.returncode:
            raise CalledProcessError(self.returncode, self.args, self.stdout, self.stderr)


async def run_process(
    args: Args,
    *,
    input: bytes | str | None = None,
    capture_output: bool = False,
    stdin: Redirect = None,
    stdout: Redirect = None,
    stderr: Redirect = None,
    timeout: float | None = None,
    check: bool = False,
    max_output: int = DEFAULT_MAX_OUTPUT,
    **kwargs: Any,
) -> CompletedProcess:
    """Run a program to completion (``subprocess.run``'s counterpart).

    Args:
        args: as for :class:`Process`.
        input: bytes (str in text mode) written to stdin, which then is a pipe.
        capture_output: capture stdout and stderr (sets both to PIPE).
        timeout: seconds; on expiry the group is killed and
            :class:`~anycore.errors.TimeoutExpired` carries the output read so far.
        check: raise :class:`~anycore.errors.CalledProcessError` on a non-zero exit.
        max_output: capture limit per stream.
        **kwargs: any other :class:`Process` argument.

    Returns:
        a :class:`CompletedProcess`.

    Raises:
        ExecutableNotFound, TimeoutExpired, CalledProcessError, OutputLimitExceeded.
    """
    if capture_output:
        if stdout is not None or stderr is not None:
            raise ValueError("capture_output cannot be combined with stdout / stderr")
        stdout = stderr = PIPE
    if input is not None:
        if stdin is not None:
            raise ValueError("input and stdin cannot both be given")
        stdin = PIPE
    proc = Process(args, stdin=stdin, stdout=stdout, stderr=stderr, **kwargs)
    async with proc:
        out, err = await _run_to_end(proc, input, timeout, max_output)
    assert proc.status is not None
    result = CompletedProcess(args, proc.status.returncode, out, err, proc.status)
    if check:
        result.check_returncode()
    return result


async def call(args: Args, *, timeout: float | None = None, **kwargs: Any) -> int:
    """Run a program and return its return code (``subprocess.call``)."""
    return (await run_process(args, timeout=timeout, **kwargs)).returncode


async def check_call(args: Args, *, timeout: float | None = None, **kwargs: Any) -> int:
    """Run a program; raise CalledProcessError unless it exits with 0.

    Returns:
        0.
    """
    return (await run_process(args, timeout=timeout, check=True, **kwargs)).returncode


async def check_output(args: Args, *, timeout: float | None = None, **kwargs: Any) -> Any:
    """Run a program and return its stdout (``subprocess.check_output``).

    Raises:
        CalledProcessError: non-zero exit (carries stdout and stderr).
    """
    if "stdout" in kwargs:
        raise ValueError("stdout argument not allowed, it will be overridden")
    return (await run_process(args, stdout=PIPE, timeout=timeout, check=True, **kwargs)).stdout
