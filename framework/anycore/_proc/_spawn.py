# Low-level process creation and exit watching, shared by _subprocess, _pipeline and _pty.
#
# What this module owns:
#   * ``spawn(...)``: start a program with every option Popen knows, and nothing else.
#     Two paths.  ``os.posix_spawn`` (glibc uses clone(CLONE_VFORK)) is the fast one and
#     covers the common case: argv, env, stdio wiring, a process group or a new session,
#     signal dispositions/mask, and close_fds (see ``_inheritable_fds``).  Whatever
#     posix_spawn cannot express on 3.11 (cwd, user, group, extra_groups, umask,
#     pass_fds) goes through ``_posixsubprocess.fork_exec``, the engine under Popen,
#     whose child reports exec failures through an error pipe.  Measured on the
#     reference box: posix_spawn ~1,300-1,700 spawns/s, fork_exec ~800-1,000.
#   * ``ExitWatcher``: learn that one child exited without ever calling waitpid(-1)
#     (which would steal other libraries' children).  A pidfd (Linux >= 5.3) is
#     registered with ``loop.add_reader``; elsewhere one thread per child blocks in
#     ``waitid`` on that pid only.  The exit status is read with ``WNOWAIT`` so the
#     child stays a zombie until its owner reaps it (``reap``): while the zombie
#     exists its pid - and so its process-group id - cannot be reused, which makes
#     the final ``killpg`` of a finished child's leftovers safe.
#   * ``ProcessStatus``: the decoded wait status (exit code / signal / core dump).
#   * ``die_with_parent``: one guard process per parent (``_GUARD_SOURCE``) that
#     SIGKILLs the listed process groups once the parent is gone, even by SIGKILL;
#     ``set_parent_death_signal`` (PR_SET_PDEATHSIG plus the getppid race check)
#     for Python children forked by the fork server.  posix_spawn cannot run code
#     in the child, and PR_SET_PDEATHSIG reaches one process only (and fires when
#     the spawning *thread* ends), so the group kill lives in the guard.
#   * exec errors: ``ExecutableNotFound`` when nothing is there, ``NotExecutable``
#     for a file without execute permission or that is no program (ENOEXEC).
#
# Rejected: the loop's own subprocess machinery (uvloop's rejects process_group, user,
# group and umask and spawns ~4x slower than asyncio's); a SIGCHLD handler (uvloop
# cannot take one, and it reaps globally); ``subprocess.Popen`` for the slow path (its
# object wants to own the wait and warns when it is dropped).
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import ExecutableNotFound, NotExecutable, describe_returncode, signal_name

__all__ = [
    "ExitWatcher",
    "ProcessStatus",
    "forget_executable",
    "forget_with_parent",
    "reap",
    "resolve_executable",
    "set_parent_death_signal",
    "spawn",
    "watch_with_parent",
]

logger = logging.getLogger("anycore.subprocess")

_HAS_PIDFD = hasattr(os, "pidfd_open")
_HAS_POSIX_SPAWN = hasattr(os, "posix_spawn") and sys.platform.startswith("linux")
# Signals Python sets to SIG_IGN that must not leak into children (Popen's
# restore_signals); an ignored SIGPIPE would make `yes | head` never end.
_RESTORE_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """How a child process ended, as ``os.WIFEXITED`` / ``os.WTERMSIG`` decode it.

    Attributes:
        pid: the process id the status belongs to.
        exit_code: the exit code when the process exited by itself, else ``None``.
        signal: the number of the signal that killed it, else ``None``.
        core_dumped: whether the kernel wrote a core dump when the signal killed it.
    """

    pid: int
    exit_code: int | None
    signal: int | None
    core_dumped: bool = False

    @classmethod
    def from_wait_status(cls, pid: int, status: int) -> ProcessStatus:
        """Decode a raw status as returned by :func:`os.waitpid`."""
        if os.WIFSIGNALED(status):
            return cls(pid, None, os.WTERMSIG(status), os.WCOREDUMP(status))
        return cls(pid, os.waitstatus_to_exitcode(status), None, False)

    @property
    def exited(self) -> bool:
        """True when the process called exit (any code)."""
        return self.exit_code is not None

    @property
    def signaled(self) -> bool:
        """True when a signal ended the process."""
        return self.signal is not None

    @property
    def success(self) -> bool:
        """True when the process exited with code 0."""
        return self.exit_code == 0

    @property
    def returncode(self) -> int:
        """Popen's convention: the exit code, or ``-signal`` when a signal killed it."""
        if self.exit_code is not None:
            return self.exit_code
        assert self.signal is not None
        return -self.signal

    @property
    def signal_name(self) -> str | None:
        """``"SIGKILL"`` and the like, or ``None`` when no signal was involved."""
        return None if self.signal is None else signal_name(self.signal)

    def __str__(self) -> str:
        core = " (core dumped)" if self.core_dumped else ""
        return describe_returncode(self.returncode) + core


def _status_from_waitid(pid: int, res: os.waitid_result) -> ProcessStatus:
    code = res.si_code
    if code == os.CLD_EXITED:
        return ProcessStatus(pid, res.si_status, None, False)
    return ProcessStatus(pid, None, res.si_status, code == os.CLD_DUMPED)


# -- executables ----------------------------------------------------------------

_which_cache: dict[tuple[str, str], str] = {}


def resolve_executable(name: str, env: Mapping[str, str] | None, *, verify: bool = True) -> str:
    """Find ``name`` like execvp does (PATH from ``env`` when given).

    With ``verify=False`` (the spawn fast path) a path is returned unchecked and a
    cached PATH lookup is trusted: exec itself reports a missing program, and
    :func:`forget_executable` drops a stale cache entry.

    Raises:
        ExecutableNotFound: nothing executable by that name.
    """
    if "/" in name:
        if not verify or (os.access(name, os.X_OK) and not os.path.isdir(name)):
            return name
        if os.path.isfile(name):
            raise NotExecutable(name, _NO_X_BIT)
        raise ExecutableNotFound(name)
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    key = (name, path)
    found = _which_cache.get(key)
    if found is not None and (not verify or os.access(found, os.X_OK)):
        return found
    unrunnable = None
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            if len(_which_cache) > 512:
                _which_cache.clear()
            _which_cache[key] = candidate
            return candidate
        if unrunnable is None and os.path.isfile(candidate):
            unrunnable = candidate
    if unrunnable is not None:
        raise NotExecutable(unrunnable, _NO_X_BIT)
    raise ExecutableNotFound(name)


_NO_X_BIT = "the file has no execute permission: chmod +x it, or run it with its interpreter"


def exec_error(executable: str, code: int | None) -> OSError:
    """The error for exec failing with ``code`` (errno) on ``executable``."""
    if code == errno.ENOEXEC:
        return NotExecutable(
            executable, "not a program this system can run: does a script lack its #! line?", code
        )
    if code == errno.EACCES and os.path.isfile(executable):
        return NotExecutable(executable, _NO_X_BIT)
    return ExecutableNotFound(executable)


def forget_executable(name: str, env: Mapping[str, str] | None) -> bool:
    """Drop ``name``'s cached PATH lookup; True if there was one."""
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    return _which_cache.pop((name, path), None) is not None


def _inheritable_fds(keep: Sequence[int]) -> list[int]:
    """Descriptors >= 3 that a child would inherit (not O_CLOEXEC), except ``keep``.

    Python opens everything non-inheritable (PEP 446), so this list is almost always
    empty; it is what lets close_fds=True use posix_spawn (a scan costs ~10 us).
    """
    found: list[int] = []
    try:
        entries = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for entry in entries:
        fd = int(entry)
        if fd > 2 and fd not in keep:
            try:
                if os.get_inheritable(fd):
                    found.append(fd)
            except OSError:  # the fd of the listdir itself, already closed
                pass
    return found


# -- spawning ------------------------------------------------------------------------


def _current_environ() -> Mapping[bytes, bytes]:
    """The environment as the plain bytes dict behind ``os.environ``.

    posix_spawn walks the mapping it is given; walking ``os.environ`` decodes
    and re-encodes every entry (~20 us per spawn here), its ``_data`` dict is
    already bytes and always current (os.environ writes through to it).
    """
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        return data
    return os.environb


def spawn(
    argv: Sequence[str | bytes],
    executable: str,
    *,
    env: Mapping[str, str] | None,
    stdin: int = -1,
    stdout: int = -1,
    stderr: int = -1,
    stderr_to_stdout: bool = False,
    cwd: str | bytes | None = None,
    close_fds: bool = True,
    pass_fds: Sequence[int] = (),
    start_new_session: bool = False,
    process_group: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
    extra_groups: Sequence[int] | None = None,
    umask: int = -1,
    restore_signals: bool = True,
    ctty: str | None = None,
    die_with_parent: bool = False,
) -> int:
    """Start ``executable`` with ``argv``; return the pid.

    ``stdin`` / ``stdout`` / ``stderr`` are descriptors to install as 0 / 1 / 2 (-1:
    inherit).  ``ctty`` is a terminal device path opened as 0, 1 and 2 after
    ``setsid`` so it becomes the child's controlling terminal (used by the pty
    module; it implies ``start_new_session``).  ``die_with_parent``: the child,
    and its process group when it leads one, is SIGKILLed if this process dies
    (see :func:`watch_with_parent`); :func:`reap` ends the watch.

    Raises:
        ExecutableNotFound: exec could not find / run the program.
        OSError: anything else the kernel refused (bad cwd, permissions, ...).
    """
    pid = _spawn(
        argv, executable, env, stdin, stdout, stderr, stderr_to_stdout, cwd, close_fds,
        pass_fds, start_new_session, process_group, uid, gid, extra_groups, umask,
        restore_signals, ctty,
    )  # fmt: skip
    if die_with_parent:
        leads = start_new_session or ctty is not None or process_group == 0
        watch_with_parent(pid, group=leads)
    return pid


def _spawn(
    argv: Sequence[str | bytes],
    executable: str,
    env: Mapping[str, str] | None,
    stdin: int,
    stdout: int,
    stderr: int,
    stderr_to_stdout: bool,
    cwd: str | bytes | None,
    close_fds: bool,
    pass_fds: Sequence[int],
    start_new_session: bool,
    process_group: int | None,
    uid: int | None,
    gid: int | None,
    extra_groups: Sequence[int] | None,
    umask: int,
    restore_signals: bool,
    ctty: str | None,
) -> int:
    env_map: Mapping[str, str] | Mapping[bytes, bytes] = _current_environ() if env is None else env
    needs_fork = (
        not _HAS_POSIX_SPAWN
        or cwd is not None
        or uid is not None
        or gid is not None
        or extra_groups is not None
        or umask >= 0
        or bool(pass_fds)
    )
    if needs_fork:
        if ctty is not None:
            raise ValueError("a controlling terminal is only set up on the posix_spawn path")
        return _fork_exec(
            argv, executable, env_map, stdin, stdout, stderr, stderr_to_stdout, cwd,
            close_fds, pass_fds, start_new_session, process_group, uid, gid,
            extra_groups, umask, restore_signals,
        )  # fmt: skip
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = []
    temporaries: list[int] = []
    if ctty is not None:
        flags = os.O_RDWR
        actions.append((os.POSIX_SPAWN_OPEN, 0, ctty, flags, 0))
        actions.append((os.POSIX_SPAWN_DUP2, 0, 1))
        actions.append((os.POSIX_SPAWN_DUP2, 0, 2))
        start_new_session = True
    else:
        # A source that is itself one of 0-2 (stdout=0, say) could be clobbered by an
        # earlier dup2: hand the child a temporary duplicate instead.
        srcs = [stdin, stdout, stderr]
        for target, src in enumerate(srcs):
            if 0 <= src <= 2 and src != target:
                srcs[target] = os.dup(src)
                temporaries.append(srcs[target])
        for target, src in enumerate(srcs):
            if src >= 0 and src != target:
                actions.append((os.POSIX_SPAWN_DUP2, src, target))
        if stderr_to_stdout:
            actions.append((os.POSIX_SPAWN_DUP2, 1, 2))
    if close_fds:
        keep = {stdin, stdout, stderr}
        for fd in _inheritable_fds(tuple(keep)):
            actions.append((os.POSIX_SPAWN_CLOSE, fd))
    kwargs: dict[str, object] = {}
    if start_new_session:
        kwargs["setsid"] = True
    elif process_group is not None:
        kwargs["setpgroup"] = process_group
    if restore_signals:
        kwargs["setsigdef"] = _RESTORE_SIGNALS
    kwargs["setsigmask"] = ()
    try:
        return os.posix_spawn(
            executable,
            list(argv),
            env_map,
            file_actions=actions or None,
            **kwargs,  # type: ignore[arg-type]
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        raise exec_error(executable, exc.errno) from exc
    except OSError as exc:
        if exc.errno == errno.ENOEXEC:
            raise exec_error(executable, exc.errno) from exc
        raise
    finally:
        for fd in temporaries:
            os.close(fd)


def _fork_exec(
    argv: Sequence[str | bytes],
    executable: str,
    env: Mapping[str, str] | Mapping[bytes, bytes],
    stdin: int,
    stdout: int,
    stderr: int,
    stderr_to_stdout: bool,
    cwd: str | bytes | None,
    close_fds: bool,
    pass_fds: Sequence[int],
    start_new_session: bool,
    process_group: int | None,
    uid: int | None,
    gid: int | None,
    extra_groups: Sequence[int] | None,
    umask: int,
    restore_signals: bool,
) -> int:
    import _posixsubprocess  # the engine under subprocess.Popen

    env_list = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]
    errpipe_read, errpipe_write = os.pipe2(os.O_CLOEXEC)
    errwrite = 1 if stderr_to_stdout else stderr
    fds_to_keep = tuple(sorted({*pass_fds, errpipe_write}))
    try:
        try:
            pid: int = _posixsubprocess.fork_exec(
                [os.fsencode(a) for a in argv],
                (os.fsencode(executable),),
                close_fds,
                fds_to_keep,
                None if cwd is None else os.fsdecode(cwd),  # type: ignore[arg-type]
                env_list,
                stdin, -1, -1, stdout, -1, errwrite,
                errpipe_read, errpipe_write,
                restore_signals,
                start_new_session,
                -1 if (process_group is None or start_new_session) else process_group,
                -1 if gid is None else gid,
                None if extra_groups is None else list(extra_groups),
                -1 if uid is None else uid,
                umask,
                None,  # type: ignore[arg-type]  # preexec_fn: never (not thread-safe)
                True,  # allow vfork
            )  # fmt: skip
        finally:
            os.close(errpipe_write)
        # Blocks only until the child has exec'd (vfork: already done).
        data = bytearray()
        while chunk := os.read(errpipe_read, 50_000):
            data += chunk
            if len(data) > 50_000:
                break
    finally:
        os.close(errpipe_read)
    if data:
        os.waitpid(pid, 0)  # it exited with 255 after reporting
        name, _, rest = bytes(data).partition(b":")
        hex_errno, _, message = rest.partition(b":")
        code = int(hex_errno, 16) if hex_errno else 0
        if message == b"noexec:chdir":
            raise OSError(code, os.strerror(code), cwd)
        if message.startswith(b"noexec"):
            raise OSError(code, os.strerror(code) if code else message.decode())
        if code in (errno.ENOENT, errno.EACCES, errno.ENOTDIR, errno.ENOEXEC):
            raise exec_error(executable, code)
        if code:
            raise OSError(code, os.strerror(code), executable)
        raise OSError(f"child failed before exec: {name.decode(errors='replace')}")
    return pid


def reap(pid: int) -> ProcessStatus | None:
    """Collect the zombie ``pid`` (never blocks for long: call after exit was seen)."""
    if _guard.watched:
        _guard.forget(pid)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return ProcessStatus.from_wait_status(pid, status)


class ExitWatcher:
    """Call ``callback(status)`` on the loop once child ``pid`` has exited.

    The child is left a zombie (``WNOWAIT``); call :func:`reap` to collect it.
    """

    __slots__ = ("_callback", "_done", "_fd", "_loop", "pid")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        callback: Callable[[ProcessStatus], None],
    ) -> None:
        self._loop = loop
        self.pid = pid
        self._callback = callback
        self._done = False
        self._fd = -1
        if _HAS_PIDFD:
            try:
                self._fd = os.pidfd_open(pid)
            except OSError:
                self._fd = -1
        if self._fd >= 0:
            loop.add_reader(self._fd, self._on_pidfd)
        else:
            threading.Thread(
                target=self._thread_wait, name=f"anycore-wait-{pid}", daemon=True
            ).start()

    def _on_pidfd(self) -> None:
        try:
            res = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        except ChildProcessError:
            self._finish(self._stolen())
            return
        if res is not None:  # None: a spurious wake-up, keep watching
            self._finish(_status_from_waitid(self.pid, res))

    def _stolen(self) -> ProcessStatus:
        # Someone else reaped our child (a waitpid(-1) elsewhere in the program):
        # the status is lost.  asyncio reports 255 in this case too.
        logger.warning("child %d was reaped by someone else; its status is unknown", self.pid)
        return ProcessStatus(self.pid, 255, None, False)

    def _thread_wait(self) -> None:
        try:
            res = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
            assert res is not None
            status = _status_from_waitid(self.pid, res)
        except ChildProcessError:
            status = self._stolen()
        try:
            self._loop.call_soon_threadsafe(self._finish, status)
        except RuntimeError:  # the loop is closed; nobody is left to tell
            pass

    def _finish(self, status: ProcessStatus) -> None:
        if self._done:
            return
        self._done = True
        self.close()
        self._callback(status)

    def close(self) -> None:
        """Stop watching (idempotent); the pidfd is closed."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                self._loop.remove_reader(fd)
            except RuntimeError:  # loop already closed
                pass
            os.close(fd)


# -- children that die with their parent ---------------------------------------------

# The guard: one small watcher process per parent, started at the first
# ``die_with_parent`` spawn.  The parent tells it, one line each, which process
# groups ("g<pgid>") and single processes ("p<pid>") to kill and which to forget;
# when the parent is gone (its pipe reads EOF, or the guard's parent pid changed:
# a forked child may still hold the pipe) it SIGKILLs every one still listed.
# The group kill is what takes a ``sh -c 'a & b'`` family along, which the
# kernel's PR_SET_PDEATHSIG (one process, and only the thread that forked it)
# cannot do.  Its own race is handled on start: a parent already gone when the
# guard first looks means cleanup at once.
_GUARD_SOURCE = r"""
import os, select, signal, sys
parent = int(sys.argv[2])
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
targets = set()
buf = b""
while True:
    gone = os.getppid() != parent
    ready = select.select([0], [], [], 0 if gone else 0.25)[0]
    if not ready:
        if gone:  # what the parent wrote before dying has been read
            break
        continue
    data = os.read(0, 65536)
    if not data:
        # EOF: the parent is exiting - or a stray close() in it hit our pipe.
        # An exiting parent's children are handed to init a moment after its
        # files close; a parent still there after 2 s is alive, and starts a
        # new guard with the whole list on its next message.
        for _ in range(200):
            if os.getppid() != parent:
                break
            select.select([], [], [], 0.01)
        else:
            sys.exit(0)
        break
    lines = (buf + data).split(b"\n")
    buf = lines.pop()[-64:]
    for line in lines:
        if len(line) < 3 or line[1:2] not in b"gp" or not line[2:].isdigit():
            continue
        key = (line[1:2], int(line[2:]))
        if line[:1] == b"+":
            targets.add(key)
        else:
            targets.discard(key)
for kind, num in targets:
    for kill in (os.killpg, os.kill) if kind == b"g" else (os.kill,):
        try:
            kill(num, signal.SIGKILL)
        except OSError:
            pass
"""

_PR_SET_PDEATHSIG = 1


class _Guard:
    """This process's guard (see ``_GUARD_SOURCE``); restarted after a fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd = -1
        self._owner = -1
        self.pid = -1
        self.watched: dict[int, bool] = {}  # pid -> its group too
        self._identity: tuple[int, int] | None = None
        self._retired: list[int] = []  # guards replaced, not yet reaped

    def _start(self) -> None:
        if self.pid > 0 and self._owner == os.getpid():
            self._retired.append(self.pid)  # reaped once it has exited
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        argv = [sys.executable, "-I", "-S", "-c", _GUARD_SOURCE, "anycore-guard", str(os.getpid())]
        try:
            self.pid = spawn(
                argv,
                sys.executable,
                env=None,
                stdin=read_end,
                stdout=null,
                start_new_session=True,  # a terminal's Ctrl-C does not reach it
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
            os.close(null)
        self._fd, self._owner = write_end, os.getpid()
        self._identity = _fd_identity(write_end)

    def _usable(self) -> bool:
        # Our pipe, still: a stray close() elsewhere in the program (then the
        # number reused for another file) must neither feed that file our
        # lines nor leave us without a guard.
        return (
            self._fd >= 0
            and self._owner == os.getpid()
            and _fd_identity(self._fd) == self._identity
        )

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _reap_retired(self) -> None:
        for pid in list(self._retired):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self._retired.remove(pid)

    def _send(self, line: str) -> None:
        with self._lock:
            if self._retired:
                self._reap_retired()
            for _ in range(2):
                if not self._usable():
                    self._start()
                    if self.watched:  # a new guard after one died: it takes over the list
                        self._write(
                            "".join(
                                f"+{'g' if g else 'p'}{p}\n" for p, g in self.watched.items()
                            ).encode()
                        )
                try:
                    self._write(line.encode())
                    return
                except OSError as exc:
                    logger.warning("the die_with_parent guard is gone (%s); restarting it", exc)
                    with contextlib.suppress(OSError):
                        os.close(self._fd)
                    self._fd = -1

    def watch(self, pid: int, *, group: bool) -> None:
        """Kill ``pid`` (its process group when ``group``) if this process dies."""
        self._send(f"+{'g' if group else 'p'}{pid}\n")
        self.watched[pid] = group

    def forget(self, pid: int) -> None:
        """``pid`` ended: take it off the list."""
        group = self.watched.pop(pid, None)
        if group is not None and self._fd >= 0 and self._owner == os.getpid():
            self._send(f"-{'g' if group else 'p'}{pid}\n")  # restarts a lost guard too


def _fd_identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


_guard = _Guard()


def _forget_guard_after_fork() -> None:
    # The child of a fork holds a copy of the pipe but is not the guard's parent:
    # it drops the copy (so EOF still comes when the parent dies) and starts its own.
    if _guard._fd >= 0:
        try:
            os.close(_guard._fd)
        except OSError:
            pass
    _guard._fd = -1
    _guard._lock = threading.Lock()
    _guard.watched = {}
    _guard._retired = []


os.register_at_fork(after_in_child=_forget_guard_after_fork)


def watch_with_parent(pid: int, *, group: bool) -> None:
    """SIGKILL ``pid`` (or its process group) when this process dies, even by SIGKILL.

    A guard process does it (any POSIX system).  :func:`reap` takes ``pid``
    off the list again; a child that is not ours to reap (a forkserver
    child) is taken off with :func:`forget_with_parent`.
    """
    _guard.watch(pid, group=group)


def forget_with_parent(pid: int) -> None:
    """Undo :func:`watch_with_parent` (``pid`` ended)."""
    _guard.forget(pid)


def set_parent_death_signal(expected_parent: int, sig: int = signal.SIGKILL) -> bool:
    """In a child: have the kernel send ``sig`` when the parent exits (Linux).

    The race with a parent that died before the call is closed by comparing
    ``getppid()`` with ``expected_parent`` afterwards: a mismatch means it is
    already gone, and this process exits at once.  Returns False where the
    system has no PR_SET_PDEATHSIG (macOS, the BSDs).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != expected_parent:
        os._exit(128 + int(sig))
    return True
