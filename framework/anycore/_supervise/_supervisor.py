# Process supervision: keep a set of programs running (supervisord's job, on the loop).
#
# What this module owns: ``Program`` (a frozen description of what to run and how to
# treat it), ``Supervisor`` (an async context manager running programs, restarting
# them by policy with exponential backoff and jitter, giving up with FATAL after too
# many restarts in a window, starting dependants only once their dependencies are
# ready and stopping in reverse dependency order), the status snapshots and the
# control interface over a Unix socket (``anycore ctl``).
#
# Design choices:
#   * One runner task per *instance* (``numprocs`` gives ``name:0``, ``name:1`` ...).
#     The runner is a plain loop: start, wait for readiness, wait for the exit, decide
#     (restart after a backoff, EXITED, FATAL).  A stop request is an event the runner
#     races against everything it waits for, so a stop in any state is prompt.
#   * Commands run through ``anycore.Process`` (own process group, pidfd exit
#     watching, bounded line readers); Python callables through ``ChildProcess``.
#     Both with ``die_with_parent``: a supervisor killed by SIGKILL or the OOM
#     killer takes its programs' process groups with it.  A one-command shell
#     string is run as ``exec command`` so the pid supervised is the program's.
#     Both are started with ``register=False``: the runtime would stop them all at
#     once in ``Phase.PROCESSES``, while the supervisor must stop them in reverse
#     dependency order, so it registers one step and one force-exit hook of its own.
#   * Readiness is a conjunction of checks: a TCP port accepts, an output line
#     matches a regex, the process stayed up for a delay, or the program reported
#     ``READY=1`` on a notify socket (systemd's protocol: NOTIFY_SOCKET is set in the
#     child's environment; ``anycore run`` speaks it).  Rejected: a fixed
#     "startsecs" only (supervisord), which cannot tell a slow start from a ready one.
#   * The control protocol is one request line (``status``, ``start NAME``,
#     ``signal NAME SIG``, ``tail NAME`` or one flat JSON object, at most 4 KiB,
#     nesting refused before parsing) and JSON reply lines, on asyncio streams
#     over a socket the supervisor binds itself: inside a fresh 0700 directory,
#     made 0600 and renamed into place (0600 from its first moment, whatever
#     the umask); each connection's SO_PEERCRED uid must be ours or root's
#     before a byte is read.  The default path is in a per-user 0700 directory
#     whose owner and mode are checked.  ``tail`` keeps the last lines of each
#     instance and feeds followers through bounded buffers (a slow one loses
#     lines, counted).  Rejected: XML-RPC over HTTP (supervisord), far more
#     surface for a few verbs; a LineHandler server, which cannot check the
#     peer before the first frame nor stream a tail as simply.
#   * Signals: ``signal()`` reaches a command's process group like the stop
#     signal; ``forward_signals`` subscribes through ``on_signal`` beside the
#     runtime's own handlers, so SIGHUP still reloads while it is forwarded.
from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import logging
import os
import random
import re
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Literal

from .._core._backend import require_asyncio
from ..errors import AnycoreError, ControlSocketError, ProcessError, RuntimeStateError

__all__ = [
    "Program",
    "ProgramState",
    "ProgramStatus",
    "Supervisor",
    "UnknownProgram",
]

logger = logging.getLogger("anycore.supervisor")

RestartPolicy = Literal["always", "on-failure", "never"]
_SERVER_LIMITS = (
    "max_connections",
    "on_limit",
    "idle_timeout",
    "frame_deadline",
    "min_receive_rate",
)
_POLICIES = ("always", "on-failure", "never")


class UnknownProgram(AnycoreError, KeyError):
    """A control request named no program or instance of the supervisor."""

    def __init__(self, name: str) -> None:
        AnycoreError.__init__(self, f"no such program: {name!r}")
        self.name = name

    def __str__(self) -> str:
        return str(self.args[0])


class ProgramState(enum.Enum):
    """The state of one program instance (supervisord's names)."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    EXITED = "exited"
    FATAL = "fatal"


@dataclass(frozen=True)
class Program:
    """What to run and how to supervise it.

    Exactly one of ``command``, ``target`` or ``server`` says what runs.

    Args:
        name: the program's name (letters, digits, ``_ . -``); instances of a
            program with ``numprocs > 1`` are named ``name:0``, ``name:1`` ...
        command: an argv sequence, or a shell command string (``/bin/sh -c``).
            ``{index}`` in it (and in ``env`` values) becomes the instance index.
        target: a Python callable run in a child process (``ChildProcess``);
            like a command, its stdout / stderr (descriptors 1 and 2) are
            captured and ``env``, ``cwd`` and ``ready_notify`` apply.
        server: ``"module:Target"`` for ``anycore run`` in a child process,
            served on ``binds``; readiness then defaults to the notify socket.
        binds: endpoints for ``server``.
        max_connections, on_limit, idle_timeout, frame_deadline,
            min_receive_rate: ``serve()``'s connection limits for a ``server``
            program (``anycore run --max-connections`` ...); ``None``: its default.
        restart: ``"always"``, ``"on-failure"`` (a non-zero exit or a signal)
            or ``"never"``.
        backoff_initial, backoff_max, backoff_jitter: the delay before restart
            number *n* is ``backoff_initial * 2**(n-1)`` capped at ``backoff_max``,
            multiplied by a random factor in ``1 +- backoff_jitter``.
        max_restarts, restart_window: more than ``max_restarts`` restarts within
            ``restart_window`` seconds make the instance FATAL (given up).
        stop_signal: the signal that asks the program to stop (sent to its
            whole process group).
        grace_period: seconds after ``stop_signal`` before SIGKILL.
        depends_on: programs that must be ready before this one starts.
        ready_port: readiness: ``port`` or ``"host:port"`` accepts TCP.
        ready_line: readiness: a line of stdout or stderr matches this regex.
        ready_delay: readiness: the process stayed up this many seconds.
        ready_notify: readiness: the program sent ``READY=1`` to NOTIFY_SOCKET.
        ready_timeout: seconds allowed for readiness; past it the start failed.
        numprocs: how many instances to run.
        env: extra environment variables (on top of the supervisor's).
        cwd: working directory.
        capture_output: log stdout/stderr line by line (else inherit them).
        pass_fds: descriptors the program inherits (e.g. listening sockets).
        hint: how to talk to the program, for people (``anycore supervise``
            prints it at start).
    """

    name: str
    command: str | tuple[str, ...] | None = None
    target: Callable[..., Any] | None = None
    server: str | None = None
    binds: tuple[str, ...] = ()
    max_connections: int | None = None
    on_limit: Literal["shed", "refuse", "hold"] | None = None
    idle_timeout: float | None = None
    frame_deadline: float | None = None
    min_receive_rate: float | None = None
    restart: RestartPolicy = "always"
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    backoff_jitter: float = 0.1
    max_restarts: int = 5
    restart_window: float = 60.0
    stop_signal: int = signal.SIGTERM
    grace_period: float = 10.0
    depends_on: tuple[str, ...] = ()
    ready_port: int | str | None = None
    ready_line: str | None = None
    ready_delay: float | None = None
    ready_notify: bool = False
    ready_timeout: float = 30.0
    numprocs: int = 1
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    cwd: str | None = None
    capture_output: bool = True
    pass_fds: tuple[int, ...] = ()
    hint: str = ""

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name):
            raise ValueError(f"invalid program name {self.name!r} (letters, digits, _ . -)")
        kinds = [k for k in ("command", "target", "server") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"program {self.name!r}: give exactly one of command, target or server"
                + (f" (got {', '.join(kinds)})" if kinds else "")
            )
        command: object = self.command
        if isinstance(command, list):  # a list is accepted too (TOML, JSON)
            object.__setattr__(self, "command", tuple(command))
        if isinstance(self.command, (str, tuple)) and not self.command:
            raise ValueError(f"program {self.name!r}: empty command")
        for name in ("binds", "depends_on", "pass_fds"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.restart not in _POLICIES:
            raise ValueError(
                f"program {self.name!r}: restart must be one of {', '.join(_POLICIES)}, "
                f"not {self.restart!r}"
            )
        if self.numprocs < 1:
            raise ValueError(f"program {self.name!r}: numprocs must be at least 1")
        if self.max_restarts < 0 or self.restart_window <= 0:
            raise ValueError(f"program {self.name!r}: bad max_restarts / restart_window")
        if self.backoff_initial < 0 or self.backoff_max < 0 or not 0 <= self.backoff_jitter < 1:
            raise ValueError(f"program {self.name!r}: bad backoff settings")
        if self.grace_period < 0 or self.ready_timeout <= 0:
            raise ValueError(f"program {self.name!r}: bad grace_period / ready_timeout")
        if self.ready_line is not None:
            try:
                re.compile(self.ready_line)
            except re.error as exc:
                raise ValueError(f"program {self.name!r}: bad ready_line regex: {exc}") from None
        if self.ready_port is not None:
            _parse_host_port(self.ready_port)
        if self.server is not None and ":" not in self.server:
            raise ValueError(f"program {self.name!r}: server must be 'module:Target'")
        limits = [k for k in _SERVER_LIMITS if getattr(self, k) is not None]
        if limits and self.server is None:
            raise ValueError(f"program {self.name!r}: {', '.join(limits)} apply to server programs")
        for key in limits:
            value = getattr(self, key)
            if key == "on_limit":
                if value not in ("shed", "refuse", "hold"):
                    raise ValueError(
                        f"program {self.name!r}: on_limit must be shed, refuse or hold"
                    )
            elif not value > 0:
                raise ValueError(f"program {self.name!r}: {key} must be positive")
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Program):
            return NotImplemented
        return _definition(self) == _definition(other)

    def __hash__(self) -> int:
        return hash(self.name)

    def argv(self, index: int = 0) -> str | list[str] | None:
        """The command line of instance ``index`` (``None`` for a callable).

        A ``server`` program runs ``python -m anycore run`` on its target.
        """
        if self.server is not None:
            argv = [sys.executable, "-m", "anycore", "run", self.server]
            for bind in self.binds:
                argv += ["--bind", bind.replace("{index}", str(index))]
            for key in _SERVER_LIMITS:
                value = getattr(self, key)
                if value is not None:
                    argv += ["--" + key.replace("_", "-"), str(value)]
            return argv
        if isinstance(self.command, str):
            return self.command.replace("{index}", str(index))
        if self.command is not None:
            return [a.replace("{index}", str(index)) for a in self.command]
        return None

    def instance_names(self) -> list[str]:
        """The names of this program's instances."""
        if self.numprocs == 1:
            return [self.name]
        return [f"{self.name}:{i}" for i in range(self.numprocs)]


def _definition(p: Program) -> tuple[Any, ...]:
    return tuple(
        tuple(sorted(p.env.items())) if f == "env" else getattr(p, f)
        for f in Program.__dataclass_fields__
    )


@dataclass(frozen=True)
class ProgramStatus:
    """A snapshot of one program instance (``Supervisor.status()``).

    Attributes:
        name: the instance name (``web`` or ``web:1``).
        program: the program's name.
        index: the instance index.
        state: its :class:`ProgramState`.
        pid: the process id while one runs, else ``None``.
        uptime: seconds since the current process started, else ``None``.
        restarts: how many times the supervisor restarted it.
        exit_code: the last exit's return code (``-N``: killed by signal N).
        description: why it is in this state, for people.
        ready: whether its readiness checks passed for the current process.
    """

    name: str
    program: str
    index: int
    state: ProgramState
    pid: int | None
    uptime: float | None
    restarts: int
    exit_code: int | None
    description: str
    ready: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``state`` as its string value)."""
        return {
            "name": self.name,
            "program": self.program,
            "index": self.index,
            "state": self.state.value,
            "pid": self.pid,
            "uptime": None if self.uptime is None else round(self.uptime, 3),
            "restarts": self.restarts,
            "exit_code": self.exit_code,
            "description": self.description,
            "ready": self.ready,
        }


def _parse_host_port(value: int | str) -> tuple[str, int]:
    if isinstance(value, int):
        host, port = "127.0.0.1", value
    else:
        text = str(value)
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = "127.0.0.1", text
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"bad ready_port {value!r}: expected PORT or HOST:PORT") from None
        host = host.strip("[]") or "127.0.0.1"
    if not 0 < port < 65536:
        raise ValueError(f"bad ready_port {value!r}: port out of range")
    return host, port


# Words after which the shell must keep running (compound commands, builtins
# whose effect is on the shell itself).
_SHELL_WORDS = frozenset(
    {
        "if",
        "then",
        "else",
        "elif",
        "fi",
        "case",
        "esac",
        "for",
        "while",
        "until",
        "do",
        "done",
        "{",
        "}",
        "(",
        ")",
        "!",
        "[[",
        "function",
        "exec",
        "cd",
        "export",
        "set",
        "unset",
        "source",
        ".",
        "eval",
        "trap",
        "ulimit",
        "umask",
        "alias",
        "readonly",
        "wait",
    }
)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def exec_form(command: str) -> str:
    """``command`` with ``exec`` put before its program when it is one simple
    command, so that the shell is replaced: the supervised pid is the program's
    and signals reach it directly.  Lists, pipelines and compound commands are
    left to the shell (``a && b``, ``x | y``, ``cd d; run``).
    """
    import shlex

    if "\n" in command:
        return command
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: the shell will say so
        return command
    if not tokens or any(t and set(t) <= set(";&|()") for t in tokens):
        return command
    words = iter(tokens)
    for word in words:
        if not _ASSIGNMENT.match(word):
            break
    else:
        return command  # only assignments
    if word in _SHELL_WORDS:
        return command
    # Assignments before exec: exported to the program (POSIX special builtin).
    index = 0
    rest = command.lstrip()
    for _ in range(tokens.index(word)):
        lead = re.match(
            r"""[A-Za-z_][A-Za-z0-9_]*=(?:'[^']*'|"(?:[^"\\]|\\.)*"|\\.|[^\s'"\\])*\s+""", rest
        )
        if lead is None:
            return command
        index += lead.end()
        rest = rest[lead.end() :]
    prefix = command.lstrip()[:index]
    return f"{prefix}exec {rest}"


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _log_context(**values: Any) -> contextlib.AbstractContextManager[Any]:
    try:
        from ..logging import bind_context
    except ImportError:  # pragma: no cover - the logging package ships with anycore
        return contextlib.nullcontext()
    return bind_context(**values)


class _NotifySocket:
    """A datagram socket receiving systemd-style notifications (READY=1)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._loop = loop
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Abstract namespace: nothing to unlink, gone with the socket.
        self.address = f"@anycore-{os.getpid()}-{id(self):x}-{name}"
        try:
            self.sock.bind("\0" + self.address[1:])
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        for _ in range(16):
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if b"READY=1" in data.split(b"\n") and not self.ready.done():
                self.ready.set_result(None)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
        if not self.ready.done():
            self.ready.cancel()


class _Instance:
    """One running copy of a program and the task that keeps it running."""

    def __init__(self, sup: Supervisor, program: Program, index: int, name: str) -> None:
        self.sup = sup
        self.program = program
        self.index = index
        self.name = name
        self.state = ProgramState.STOPPED
        self.pid: int | None = None
        self.started_at: float | None = None
        self.restarts = 0
        self.exit_code: int | None = None
        self.description = "not started"
        self.is_ready = False
        self.task: asyncio.Task[None] | None = None
        self.proc: Any = None
        # The current process's captured output: (stream, "stdout" | "stderr").
        self._outputs: list[tuple[Any, str]] = []
        self._own_readers: list[Any] = []  # a callable's, closed by us
        self._stop_event = asyncio.Event()
        self._changed = asyncio.Event()
        self._restart_times: collections.deque[float] = collections.deque()
        self._line_regex = (
            re.compile(program.ready_line) if program.ready_line is not None else None
        )
        self._line_seen: asyncio.Future[None] | None = None
        self.log = logging.getLogger(f"anycore.program.{name}")
        # The last output lines (for ``ctl tail``) and the tails following them.
        self.history: collections.deque[tuple[int, str, str, str]] = collections.deque(
            maxlen=_HISTORY
        )
        self.followers: set[_Follower] = set()

    # -- state ------------------------------------------------------------------------

    def _set(self, state: ProgramState, description: str) -> None:
        self.state = state
        self.description = description
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        self.sup._notify_change()
        level = (
            logging.WARNING
            if state in (ProgramState.FATAL, ProgramState.BACKOFF)
            else (logging.INFO)
        )
        logger.log(
            level,
            "%s %s%s",
            self.name,
            state.value,
            f" ({description})" if description else "",
            extra=self._extra(),
        )

    def _extra(self) -> dict[str, Any]:
        """The ``extra`` of this instance's records (no ``pid`` while none runs)."""
        if self.pid is None:
            return {"program": self.name}
        return {"program": self.name, "pid": self.pid}

    def status(self) -> ProgramStatus:
        uptime = None
        if self.started_at is not None and self.pid is not None:
            uptime = time.monotonic() - self.started_at
        return ProgramStatus(
            name=self.name,
            program=self.program.name,
            index=self.index,
            state=self.state,
            pid=self.pid,
            uptime=uptime,
            restarts=self.restarts,
            exit_code=self.exit_code,
            description=self.description,
            ready=self.is_ready,
        )

    @property
    def active(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def settled(self) -> bool:
        """Whether dependants may stop waiting (ready, or given up)."""
        return self.is_ready or self.state in (
            ProgramState.FATAL,
            ProgramState.EXITED,
            ProgramState.STOPPED,
        )

    async def wait_changed(self) -> None:
        await self._changed.wait()

    # -- control ------------------------------------------------------------------------

    def start(self) -> None:
        if self.active:
            return
        self._stop_event = asyncio.Event()
        self._restart_times.clear()
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"supervise {self.name}"
        )

    async def stop(self) -> None:
        self._stop_event.set()
        task = self.task
        if task is not None and not task.done():
            await asyncio.wait({task})

    def send_signal(self, sig: int) -> bool:
        """Signal the running process (a command's whole group); whether one got it."""
        proc = self.proc
        if proc is None or self.pid is None:
            return False
        try:
            if hasattr(proc, "join"):
                proc.send_signal(sig)
            else:
                proc.send_signal(sig, group=True)
        except (OSError, ValueError, AnycoreError):
            return False
        return True

    def _record(self, stream_name: str, text: str) -> None:
        self.sup._sequence += 1
        item = (self.sup._sequence, self.name, stream_name, text)
        self.history.append(item)
        for follower in self.followers:
            follower.push(item)

    def kill_now(self) -> None:
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(Exception):
                if hasattr(proc, "_kill_now"):
                    proc._kill_now()
                else:
                    proc.kill()

    # -- the runner -------------------------------------------------------------------

    async def _wait_deps(self) -> str | None:
        """Wait until every dependency is settled; the failed one's name, if any."""
        deps = [i for d in self.program.depends_on for i in self.sup._instances_of(d)]
        while True:
            pending = [d for d in deps if not d.settled]
            if not pending:
                break
            self._set(ProgramState.STARTING, f"waiting for {pending[0].name}")
            stopper = asyncio.ensure_future(self._stop_event.wait())
            waits = {asyncio.ensure_future(d.wait_changed()) for d in pending}
            try:
                await asyncio.wait({stopper, *waits}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for fut in (stopper, *waits):
                    fut.cancel()
            if self._stop_event.is_set():
                return None
        for d in deps:
            if not d.is_ready:
                return d.name
        return None

    async def _run(self) -> None:
        p = self.program
        try:
            failed_dep = await self._wait_deps()
            if self._stop_event.is_set():
                return
            if failed_dep is not None:
                self._set(ProgramState.FATAL, f"dependency {failed_dep} is not running")
                return
            while not self._stop_event.is_set():
                returncode, was_ready = await self._run_once()
                if self._stop_event.is_set():
                    break
                if returncode is not None:
                    self.exit_code = returncode
                why = self.description if returncode is None else _describe(returncode)
                if p.restart == "never" or (
                    p.restart == "on-failure" and returncode == 0 and was_ready
                ):
                    self._set(ProgramState.EXITED, why)
                    return
                now = time.monotonic()
                while self._restart_times and now - self._restart_times[0] > p.restart_window:
                    self._restart_times.popleft()
                if len(self._restart_times) >= p.max_restarts:
                    self._set(
                        ProgramState.FATAL,
                        f"{why}; gave up after {len(self._restart_times)} restarts "
                        f"in {p.restart_window:g}s",
                    )
                    return
                self._restart_times.append(now)
                attempt = len(self._restart_times)
                delay = min(p.backoff_max, p.backoff_initial * 2 ** (attempt - 1))
                delay *= 1 + random.uniform(-p.backoff_jitter, p.backoff_jitter)
                self._set(ProgramState.BACKOFF, f"{why}; restarting in {delay:.2f}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_event.wait(), delay)
                if self._stop_event.is_set():
                    break
                self.restarts += 1
        finally:
            if self.state not in (ProgramState.FATAL, ProgramState.EXITED):
                self._set(ProgramState.STOPPED, "stopped")

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update({k: v.replace("{index}", str(self.index)) for k, v in self.program.env.items()})
        env["ANYCORE_PROGRAM"] = self.name
        env.pop("NOTIFY_SOCKET", None)
        env.pop("LISTEN_FDS", None)
        env.pop("LISTEN_PID", None)
        if self._notify is not None:
            env["NOTIFY_SOCKET"] = self._notify.address
        return env

    async def _spawn(self) -> None:
        p = self.program
        argv = p.argv(self.index)
        if argv is None:
            await self._spawn_callable()
            return
        from .._proc._subprocess import DEVNULL, PIPE, Process

        env = self._environment()
        capture = PIPE if p.capture_output else None
        if isinstance(argv, str):
            argv = exec_form(argv)
        proc = Process(
            argv,
            shell=isinstance(argv, str),
            stdin=DEVNULL,
            stdout=capture,
            stderr=capture,
            cwd=p.cwd,
            env=env,
            process_group=0,
            grace_period=p.grace_period,
            split_long_lines=True,
            pass_fds=p.pass_fds,
            register=False,
            die_with_parent=True,  # even a SIGKILLed supervisor leaves no program behind
        )
        await proc.start()
        self.proc = proc
        self.pid = proc.pid
        self._outputs = [(s, n) for s, n in ((proc.stdout, "stdout"), (proc.stderr, "stderr")) if s]

    async def _spawn_callable(self) -> None:
        # The child's descriptors 1 and 2 are redirected to socketpairs whose
        # other ends are read here like a command's pipes (sockets, because
        # multiprocessing hands sockets to a forkserver / spawn child).
        from .._proc._pipes import ProcessReader
        from .._workers._child import ChildProcess

        p = self.program
        assert p.target is not None
        pairs = [socket.socketpair() for _ in range(2 if p.capture_output else 0)]
        try:
            child: Any = ChildProcess(
                p.target,
                name=self.name,
                grace=p.grace_period,
                register=False,
                stdout=pairs[0][1] if pairs else None,
                stderr=pairs[1][1] if pairs else None,
                env=self._environment(),
                cwd=p.cwd,
                die_with_parent=True,
            )
            await child.start()
        except BaseException:
            for ours, _ in pairs:
                ours.close()
            raise
        finally:
            for _, theirs in pairs:
                theirs.close()  # the child has its copy: EOF once it (and its children) end
        loop = asyncio.get_running_loop()
        for (ours, _), stream_name in zip(pairs, ("stdout", "stderr"), strict=False):
            reader = ProcessReader(loop, ours.detach(), stream_name, split_long_lines=True)
            self._own_readers.append(reader)
            self._outputs.append((reader, stream_name))
        self.proc = child
        self.pid = child.pid

    _notify: _NotifySocket | None = None

    async def _run_once(self) -> tuple[int | None, bool]:
        """Start the program once and supervise it until it exits or is stopped.

        Returns:
            the return code (``None`` when it could not start) and whether it
            became ready.
        """
        p = self.program
        loop = asyncio.get_running_loop()
        self.is_ready = False
        self.pid = None
        self._set(ProgramState.STARTING, "")
        notify_wanted = p.ready_notify or (p.server is not None)
        self._notify = _NotifySocket(loop, self.name.replace(":", "-")) if notify_wanted else None
        self._line_seen = loop.create_future() if self._line_regex is not None else None
        pumps: list[asyncio.Task[None]] = []
        waiters: list[asyncio.Future[Any]] = []
        try:
            try:
                await self._spawn()
            except (OSError, ProcessError, ValueError, RuntimeStateError) as exc:
                self._set(ProgramState.STARTING, f"cannot start: {exc}")
                return None, False
            self.started_at = time.monotonic()
            for stream, stream_name in self._outputs:
                pumps.append(
                    loop.create_task(
                        self._pump(stream, stream_name), name=f"{self.name} {stream_name}"
                    )
                )
            exited = asyncio.ensure_future(self._wait_exit())
            stopper = asyncio.ensure_future(self._stop_event.wait())
            ready = asyncio.ensure_future(self._check_ready())
            waiters = [exited, stopper, ready]
            self._set(ProgramState.STARTING, f"pid {self.pid}")
            await asyncio.wait({exited, stopper, ready}, return_when=asyncio.FIRST_COMPLETED)
            if ready.done() and not exited.done() and not stopper.done():
                error = ready.exception()
                if error is None:
                    self.is_ready = True
                    self._set(ProgramState.RUNNING, f"pid {self.pid}")
                else:
                    self.log.error(
                        "%s did not become ready: %s",
                        self.name,
                        error,
                        extra={"program": self.name, "pid": self.pid},
                    )
                    self.description = f"not ready: {error}"
                    await self._terminate(exited)
                    return exited.result() if exited.done() else None, False
            if not exited.done():
                await asyncio.wait({exited, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                self._set(ProgramState.STOPPING, f"pid {self.pid}")
                await self._terminate(exited)
                await asyncio.wait({exited})
            return exited.result(), self.is_ready
        finally:
            for fut in waiters:
                fut.cancel()
            await self._cleanup(pumps)

    async def _wait_exit(self) -> int:
        proc = self.proc
        if hasattr(proc, "join"):
            code = await proc.join()
            await self._log_remote_error(proc)
            return int(code) if code is not None else -signal.SIGKILL
        return int(await proc.wait())

    async def _log_remote_error(self, child: Any) -> None:
        # A callable that raised reports its exception over the channel rather
        # than on stderr: log its traceback, as a command's would have been.
        from ..errors import RemoteError

        try:
            await child.result()
        except RemoteError as exc:
            self.log.error(
                "%s raised:\n%s",
                self.name,
                exc.remote_traceback.rstrip("\n"),
                extra={"program": self.name, "pid": self.pid, "stream": "stderr"},
            )
        except Exception:  # killed, or sys.exit: the exit status says it
            pass

    async def _terminate(self, exited: asyncio.Future[int]) -> None:
        """stop_signal to the group, grace period, SIGKILL to the group."""
        p = self.program
        proc = self.proc
        if proc is None:
            return
        try:
            if hasattr(proc, "join"):
                proc.send_signal(p.stop_signal)
            else:
                proc.send_signal(p.stop_signal, group=True)
        except (OSError, ValueError):
            pass
        await asyncio.wait({exited}, timeout=p.grace_period)
        if not exited.done():
            self.log.warning(
                "%s did not stop within %gs: killing its process group",
                self.name,
                p.grace_period,
                extra={"program": self.name, "pid": self.pid},
            )
            self.kill_now()
            await asyncio.wait({exited}, timeout=5.0)

    async def _cleanup(self, pumps: list[asyncio.Task[None]]) -> None:
        proc = self.proc
        # Let the pumps log what the program wrote last (bounded: a grandchild
        # may hold the pipes open).
        if pumps:
            await asyncio.wait(pumps, timeout=1.0)
        if proc is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.aclose())
        for task in pumps:
            task.cancel()
        if pumps:
            await asyncio.wait(pumps)
        for reader in self._own_readers:
            reader.close()
        self._own_readers = []
        self._outputs = []
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        if self._line_seen is not None and not self._line_seen.done():
            self._line_seen.cancel()
        self._line_seen = None
        self.proc = None
        self.pid = None
        self.started_at = None
        self.is_ready = False

    async def _pump(self, stream: Any, stream_name: str) -> None:
        pid = self.pid
        extra = {"program": self.name, "pid": pid, "stream": stream_name}
        with _log_context(program=self.name, pid=pid):
            try:
                async for raw in stream:
                    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                    text = text.rstrip("\r\n")
                    self.log.info("%s", text, extra=extra)
                    self._record(stream_name, text)
                    seen = self._line_seen
                    regex = self._line_regex
                    if (
                        seen is not None
                        and regex is not None
                        and not seen.done()
                        and regex.search(text)
                    ):
                        seen.set_result(None)
            except (OSError, AnycoreError) as exc:
                self.log.debug("%s: %s pump ended: %s", self.name, stream_name, exc, extra=extra)

    async def _check_ready(self) -> None:
        p = self.program
        checks: list[Awaitable[Any]] = []
        if self._line_seen is not None:
            checks.append(self._line_seen)
        if self._notify is not None:
            checks.append(self._notify.ready)
        if p.ready_port is not None:
            checks.append(self._wait_port(*_parse_host_port(p.ready_port)))
        if p.ready_delay is not None:
            checks.append(asyncio.sleep(p.ready_delay))
        if not checks:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*checks), p.ready_timeout)
        except TimeoutError:
            raise TimeoutError(f"no readiness within {p.ready_timeout:g}s") from None

    async def _wait_port(self, host: str, port: int) -> None:
        while True:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.05)  # polling OS state (a port), bounded by ready_timeout
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


class Supervisor:
    """Keep a set of programs running; an async context manager.

    ``async with Supervisor(programs) as sup:`` starts every program (each
    after the programs it depends on are ready) and, when the block ends,
    stops them in reverse dependency order: the stop signal to each process
    group, the grace period, SIGKILL.  Under an anycore runtime the stop also
    happens in ``Phase.PROCESSES`` of a graceful shutdown, and a forced exit
    SIGKILLs every group.

    Args:
        programs: the :class:`Program` definitions (names must be unique).
        control_socket: a Unix socket path for ``anycore ctl`` (None: none);
            created mode 0600, each connection's peer must be this user or root.
        autostart: start the programs when entering the block.
        forward_signals: signals (numbers or names such as ``"SIGHUP"``) that,
            received by this process while the block runs, are sent on to every
            running program (see :meth:`signal`).  Other handlers of them
            (the runtime's SIGHUP reload) keep running.

    Raises:
        ValueError: duplicate names, unknown or cyclic dependencies.
    """

    def __init__(
        self,
        programs: Iterable[Program] = (),
        *,
        control_socket: str | None = None,
        autostart: bool = True,
        forward_signals: Iterable[int | str] = (),
    ) -> None:
        self._programs: dict[str, Program] = {}
        self._instances: dict[str, list[_Instance]] = {}
        self.control_socket = control_socket
        self.autostart = autostart
        self._order: list[str] = []
        self._set_programs(list(programs))
        self._entered = False
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._changed: asyncio.Event | None = None
        self._handles: list[Any] = []
        self._control: socket.socket | None = None
        self._control_accept: asyncio.Task[None] | None = None
        self._control_path: str | None = None
        self._control_inode = 0
        self._control_tasks: dict[asyncio.Task[None], socket.socket] = {}
        self.forward_signals = tuple(parse_signal(s) for s in forward_signals)
        self._sequence = 0  # orders output lines across instances (``ctl tail``)

    # -- definitions ------------------------------------------------------------------

    @staticmethod
    def _topological(programs: Sequence[Program]) -> list[str]:
        by_name: dict[str, Program] = {}
        for p in programs:
            if p.name in by_name:
                raise ValueError(f"duplicate program name {p.name!r}")
            by_name[p.name] = p
        for p in programs:
            for dep in p.depends_on:
                if dep not in by_name:
                    raise ValueError(f"program {p.name!r} depends on unknown program {dep!r}")
        order: list[str] = []
        marks: dict[str, int] = {}

        def visit(name: str, path: list[str]) -> None:
            mark = marks.get(name)
            if mark == 2:
                return
            if mark == 1:
                cycle = [*path[path.index(name) :], name]
                raise ValueError("dependency cycle: " + " -> ".join(cycle))
            marks[name] = 1
            for dep in by_name[name].depends_on:
                visit(dep, [*path, name])
            marks[name] = 2
            order.append(name)

        for p in programs:
            visit(p.name, [])
        return order

    def _set_programs(self, programs: list[Program]) -> None:
        self._order = self._topological(programs)
        self._programs = {p.name: p for p in programs}

    def _make_instances(self, p: Program) -> list[_Instance]:
        return [_Instance(self, p, i, n) for i, n in enumerate(p.instance_names())]

    def _instances_of(self, name: str) -> list[_Instance]:
        return self._instances.get(name, [])

    @property
    def programs(self) -> list[Program]:
        """The current definitions, in dependency order."""
        return [self._programs[n] for n in self._order]

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        require_asyncio(
            "Supervisor",
            "supervise programs from an asyncio (or uvloop) loop, or run `anycore supervise`",
        )
        if self._entered:
            raise RuntimeStateError("a Supervisor can be entered only once")
        self._entered = True
        self._changed = asyncio.Event()
        for name in self._order:
            self._instances[name] = self._make_instances(self._programs[name])
        try:
            from .._core._runtime import Phase, current_runtime

            rt = current_runtime()
            if rt is not None:
                self._handles.append(
                    rt.add_shutdown_step(Phase.PROCESSES, "supervisor", self.aclose)
                )
                self._handles.append(rt.add_force_exit_hook(self.kill_all))
            if self.forward_signals:
                from .._core._signals import on_signal

                first, *more = self.forward_signals
                self._handles.append(on_signal(first, self._forward, *more))
            if self.control_socket is not None:
                await self._start_control(self.control_socket)
            if self.autostart:
                for name in self._order:
                    for inst in self._instances[name]:
                        inst.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop every program in reverse dependency order (idempotent)."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._close(), name="supervisor close"
            )
        closing = self._closing
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            # Cancelled while stopping: finish the job, then go on cancelling.
            if not closing.done():
                await asyncio.wait({closing})
            raise

    async def _close(self) -> None:
        try:
            await self._close_control()
            await self._stop_programs(list(self._order))
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._closed.set()

    async def _stop_programs(self, names: list[str]) -> None:
        """Stop ``names``; a program stops after every one depending on it."""
        if not names:
            return
        done: dict[str, asyncio.Event] = {n: asyncio.Event() for n in names}
        dependants: dict[str, list[str]] = {n: [] for n in names}
        for n in names:
            for dep in self._programs[n].depends_on if n in self._programs else ():
                if dep in dependants:
                    dependants[dep].append(n)

        async def stop_one(name: str) -> None:
            try:
                for d in dependants[name]:
                    await done[d].wait()
                insts = self._instances.get(name, [])
                if insts:
                    await asyncio.gather(*(i.stop() for i in insts))
            finally:
                done[name].set()

        await asyncio.gather(*(stop_one(n) for n in names))

    def kill_all(self) -> None:
        """SIGKILL every program's process group now (the force-exit hook)."""
        for insts in self._instances.values():
            for inst in insts:
                inst.kill_now()

    async def wait_closed(self) -> None:
        """Wait until the supervisor was closed (by :meth:`aclose` or shutdown)."""
        await self._closed.wait()

    # -- status -------------------------------------------------------------------------

    def _notify_change(self) -> None:
        if self._changed is not None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def _select(self, name: str) -> list[_Instance]:
        if name == "all":
            return [i for n in self._order for i in self._instances.get(n, [])]
        if name in self._instances:
            return list(self._instances[name])
        for insts in self._instances.values():
            for inst in insts:
                if inst.name == name:
                    return [inst]
        raise UnknownProgram(name)

    def status(self, name: str = "all") -> list[ProgramStatus]:
        """Snapshots of the instances of ``name`` (a program, an instance or "all").

        Raises:
            UnknownProgram: no such program or instance.
        """
        return [i.status() for i in self._select(name)]

    async def wait_for(
        self,
        name: str,
        predicate: Callable[[list[ProgramStatus]], bool],
        timeout: float | None = None,
    ) -> list[ProgramStatus]:
        """Wait until ``predicate(self.status(name))`` holds; returns those snapshots.

        Raises:
            TimeoutError: ``timeout`` passed first.
            UnknownProgram: no such program or instance.
        """

        async def wait() -> list[ProgramStatus]:
            while True:
                assert self._changed is not None
                changed = self._changed
                snapshot = self.status(name)
                if predicate(snapshot):
                    return snapshot
                await changed.wait()

        if self._changed is None:
            raise RuntimeStateError("the supervisor is not running")
        return await asyncio.wait_for(wait(), timeout)

    async def wait_state(
        self, name: str, *states: ProgramState, timeout: float | None = None
    ) -> list[ProgramStatus]:
        """Wait until every instance of ``name`` is in one of ``states``.

        Raises:
            TimeoutError: ``timeout`` passed first.
        """
        return await self.wait_for(name, lambda snap: all(s.state in states for s in snap), timeout)

    # -- control --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._changed is None or self._closing is not None:
            raise RuntimeStateError("the supervisor is not running")

    async def start(self, name: str) -> list[ProgramStatus]:
        """Start ``name`` (program, instance or "all") if it is not running.

        Returns once the runners started (not once ready; see :meth:`wait_state`).
        """
        self._check_open()
        for inst in self._select(name):
            if not inst.active:
                inst.restarts = 0
                inst.start()
        return self.status(name)

    async def stop(self, name: str) -> list[ProgramStatus]:
        """Stop ``name`` (its instances' groups get the stop signal); waits."""
        self._check_open()
        await asyncio.gather(*(i.stop() for i in self._select(name)))
        return self.status(name)

    async def restart(self, name: str) -> list[ProgramStatus]:
        """Stop then start ``name``."""
        await self.stop(name)
        return await self.start(name)

    async def rolling_restart(self, name: str, timeout: float | None = None) -> None:
        """Restart the instances of ``name`` one at a time, each only after the
        previous replacement is ready: the others keep serving meanwhile.

        Raises:
            TimeoutError: a replacement did not become ready in ``timeout``.
        """
        self._check_open()
        for inst in self._select(name):
            await inst.stop()
            inst.start()
            await self.wait_for(
                inst.name,
                lambda s: s[0].ready or s[0].state in (ProgramState.FATAL, ProgramState.EXITED),
                timeout,
            )

    async def reload(self, programs: Iterable[Program]) -> dict[str, list[str]]:
        """Apply new definitions: programs whose definition changed are restarted,
        new ones started, removed ones stopped.

        Returns:
            ``{"added": [...], "changed": [...], "removed": [...]}``.

        Raises:
            ValueError: the new set is invalid (nothing was changed then).
        """
        self._check_open()
        new = list(programs)
        new_order = self._topological(new)
        by_name = {p.name: p for p in new}
        removed = [n for n in self._order if n not in by_name]
        changed = [n for n in new_order if n in self._programs and self._programs[n] != by_name[n]]
        added = [n for n in new_order if n not in self._programs]
        # Stop what goes away or changes (dependants first), under the old graph.
        await self._stop_programs([n for n in self._order if n in removed or n in changed])
        for n in removed:
            self._instances.pop(n, None)
        self._programs = by_name
        self._order = new_order
        for n in new_order:
            if n in changed or n in added:
                previous = {i.name: i for i in self._instances.get(n, [])}
                self._instances[n] = self._make_instances(by_name[n])
                for inst in self._instances[n]:
                    old = previous.get(inst.name)
                    if old is not None:  # `ctl tail` keeps following a restarted one
                        inst.history, inst.followers = old.history, old.followers
                    inst.start()
        logger.info(
            "reloaded: added %s, changed %s, removed %s",
            added or "-",
            changed or "-",
            removed or "-",
        )
        self._notify_change()
        return {"added": added, "changed": changed, "removed": removed}

    # -- signals ------------------------------------------------------------------------

    def signal(self, name: str, sig: int) -> list[ProgramStatus]:
        """Send ``sig`` to the running instances of ``name`` (program, instance or "all").

        A command's whole process group gets it (as the stop signal does); a
        callable's process gets it.  Instances that are not running are skipped.

        Raises:
            UnknownProgram: no such program or instance.
            RuntimeStateError: none of them is running.
            ValueError: ``sig`` is not a signal.
        """
        self._check_open()
        number = parse_signal(sig)
        insts = self._select(name)
        sent = [inst for inst in insts if inst.send_signal(number)]
        if not sent:
            raise RuntimeStateError(f"{name} is not running: no process got the signal")
        logger.info("sent %s to %s", signal.Signals(number).name, ", ".join(i.name for i in sent))
        return [i.status() for i in insts]

    def _forward(self, sig: int) -> None:
        running = [i for n in self._order for i in self._instances.get(n, [])]
        sent = [inst.name for inst in running if inst.send_signal(sig)]
        if sent:
            logger.info("forwarded %s to %s", signal.Signals(sig).name, ", ".join(sent))

    # -- the control socket ------------------------------------------------------------

    async def _start_control(self, path: str) -> None:
        sock = bind_private_unix(path)
        self._control = sock
        self._control_path = path
        self._control_inode = os.stat(path).st_ino
        self._control_accept = asyncio.get_running_loop().create_task(
            self._accept_control(sock), name="supervisor control socket"
        )

    async def _accept_control(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and friends: keep serving the others
                logger.warning("control socket: accept failed: %s", exc)
                await asyncio.sleep(0.5)  # back off from a descriptor shortage
                continue
            try:
                uid = peer_uid(conn)
            except OSError:  # gone already
                conn.close()
                continue
            if uid is not None and uid not in _TRUSTED_UIDS:
                logger.warning("control socket: refused a connection from uid %d", uid)
                conn.close()
                continue
            task = loop.create_task(self._serve_control(conn), name="supervisor control")
            self._control_tasks[task] = conn
            task.add_done_callback(self._control_done)

    def _control_done(self, task: asyncio.Task[None]) -> None:
        conn = self._control_tasks.pop(task, None)
        if conn is not None:
            conn.close()
        if not task.cancelled() and task.exception() is not None:
            logger.error("control connection failed", exc_info=task.exception())

    async def _close_control(self) -> None:
        listener, self._control = self._control, None
        if listener is None:
            return
        accept, self._control_accept = self._control_accept, None
        if accept is not None:
            accept.cancel()
            await asyncio.wait({accept})
        listener.close()
        tasks = list(self._control_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        path = self._control_path
        with contextlib.suppress(OSError):
            if path is not None and os.stat(path).st_ino == self._control_inode:
                os.unlink(path)  # only our own socket file, not a successor's

    async def _serve_control(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=_MAX_REQUEST)
        except OSError:
            return  # the peer left at once; _control_done closes the socket
        try:
            for _ in range(_MAX_REQUESTS_PER_CONNECTION):
                try:
                    raw = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    reply: dict[str, Any] = {
                        "ok": False,
                        "error": f"request too long (at most {_MAX_REQUEST} bytes)",
                    }
                    writer.write(json.dumps(reply).encode() + b"\n")
                    await writer.drain()
                    return
                if not raw:
                    return
                text = raw.decode("utf-8", "replace")
                try:
                    request = _parse_request(text)
                except ValueError as exc:
                    reply = {"ok": False, "error": str(exc)}
                else:
                    if request["command"] == "tail":
                        await self._tail(request, reader, writer)
                        return
                    reply = await self.handle_command(text)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _tail(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Stream the recent and the new output lines of the request's instances."""
        name = request["name"]
        try:
            insts = self._select(name)
        except UnknownProgram as exc:
            writer.write(json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n")
            await writer.drain()
            return
        lines = min(max(int(request.get("lines", 10)), 0), _HISTORY)
        backlog = sorted(item for inst in insts for item in inst.history)
        follower = _Follower()
        for item in backlog[len(backlog) - lines :] if lines else ():
            follower.push(item)
        for inst in insts:
            inst.followers.add(follower)
        eof = asyncio.ensure_future(reader.read(1))  # EOF (or any input) ends the tail
        try:
            writer.write(json.dumps({"ok": True, "following": name}).encode() + b"\n")
            while not eof.done():
                follower.wakeup.clear()
                while follower.lines:
                    _, inst_name, stream, text = follower.lines.popleft()
                    out = {"name": inst_name, "stream": stream, "line": text}
                    writer.write(json.dumps(out).encode() + b"\n")
                if follower.dropped:
                    writer.write(json.dumps({"dropped": follower.dropped}).encode() + b"\n")
                    follower.dropped = 0
                await writer.drain()
                if not follower.lines:
                    wake = asyncio.ensure_future(follower.wakeup.wait())
                    try:
                        await asyncio.wait({eof, wake}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        wake.cancel()
        finally:
            eof.cancel()
            for inst in insts:
                inst.followers.discard(follower)

    async def handle_command(self, request: str) -> dict[str, Any]:
        """Run one control request and return the JSON-ready reply.

        ``request`` is ``"status [NAME]"``, ``"start NAME"``, ``"stop NAME"``,
        ``"restart NAME"``, ``"signal NAME SIG"`` or a flat JSON object
        ``{"command": ..., "name": ..., "signal": ...}``.  ``start`` and
        ``restart`` reply once the instances settled (ready, backing off or
        given up; bounded by their ``ready_timeout``).  The reply is
        ``{"ok": true, "result": [...]}`` or ``{"ok": false, "error": "..."}``;
        a request over 4 KiB or nested JSON is refused with an error reply.
        (``tail NAME`` streams and is served by the control socket only.)
        """
        try:
            req = _parse_request(request)
            command, name = req["command"], req["name"]
            if command == "status":
                result = self.status(name)
            elif command == "stop":
                result = await self.stop(name)
            elif command in ("start", "restart"):
                await getattr(self, command)(name)
                result = await self._settled(name)
            elif command == "signal":
                result = self.signal(name, req["signal"])
            else:
                raise ValueError(f"{command} is served by the control socket only")
        except (AnycoreError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "result": [s.to_dict() for s in result]}

    async def _settled(self, name: str) -> list[ProgramStatus]:
        """The status of ``name`` once each instance left STOPPED / plain STARTING."""
        insts = self._select(name)
        bound = max((i.program.ready_timeout for i in insts), default=0.0) + 5.0

        def settled(snapshot: list[ProgramStatus]) -> bool:
            return all(
                s.ready or s.state not in (ProgramState.STOPPED, ProgramState.STARTING)
                for s in snapshot
            )

        try:
            return await self.wait_for(name, settled, bound)
        except TimeoutError:
            return self.status(name)


# -- control requests and the socket's safety ------------------------------------------

_MAX_REQUEST = 4096  # bytes of one request line
_MAX_REQUESTS_PER_CONNECTION = 1000
_HISTORY = 200  # output lines kept per instance for `ctl tail`
_TRUSTED_UIDS = frozenset({os.getuid(), 0})
_USAGE = (
    "expected: status [NAME] | start NAME | stop NAME | restart NAME | "
    "signal NAME SIG | tail NAME [LINES]"
)
_COMMANDS = {"status": 0, "start": 1, "stop": 1, "restart": 1, "signal": 2, "tail": 1}


def parse_signal(value: object) -> int:
    """A signal number from a number or a name (``"TERM"``, ``"SIGHUP"``).

    Raises:
        ValueError: not a signal.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a signal: {value!r}")
    if isinstance(value, int):
        try:
            return int(signal.Signals(value))
        except ValueError:
            raise ValueError(f"unknown signal {value}") from None
    if isinstance(value, str):
        if value.isdigit():
            return parse_signal(int(value))
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            return int(signal.Signals[name])
        except KeyError:
            raise ValueError(f"unknown signal {value!r}") from None
    raise ValueError(f"not a signal: {value!r}")


def _nesting(text: str, limit: int) -> int:
    """The bracket depth of JSON ``text`` (outside strings), scanning at most to ``limit + 1``."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif ch in "]}":
            depth -= 1
    return deepest


def _parse_request(text: str) -> dict[str, Any]:
    """``{"command", "name", ...}`` from a request line (words or one flat JSON object).

    Raises:
        ValueError: too long, nested, not an object, an unknown command or
            missing arguments.
    """
    if len(text) > _MAX_REQUEST:
        raise ValueError(f"request too long (at most {_MAX_REQUEST} bytes)")
    text = text.strip()
    if text.startswith(("{", "[")):
        # Bounded before parsing: json.loads recurses once per level.
        if _nesting(text, 1) > 1:
            raise ValueError("a request object must be flat: one JSON object of strings")
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"invalid JSON request: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError("a request object must be a JSON object")
        for key, value in obj.items():
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ValueError(f"request field {key!r} must be a string or an integer")
        words = [str(obj.get("command", ""))]
        request: dict[str, Any] = {"name": str(obj.get("name", "all"))}
        explicit_name = "name" in obj
        if "signal" in obj:
            request["signal"] = obj["signal"]
        if "lines" in obj:
            request["lines"] = obj["lines"]
    else:
        words = text.split()
        if not words or len(words) > 3:
            raise ValueError(_USAGE)
        request = {"name": words[1] if len(words) > 1 else "all"}
        explicit_name = len(words) > 1
        if len(words) == 3:
            request["signal" if words[0].lower() == "signal" else "lines"] = words[2]
    command = words[0].lower()
    if command not in _COMMANDS:
        raise ValueError(f"unknown command {command!r}; {_USAGE}")
    request["command"] = command
    if _COMMANDS[command] and not explicit_name:
        raise ValueError(f"{command} needs a program name (or 'all')")
    if command == "signal":
        if "signal" not in request:
            raise ValueError("signal needs a program name and a signal (signal NAME SIG)")
        request["signal"] = parse_signal(request["signal"])
    elif "signal" in request:
        raise ValueError(f"{command} takes no signal; {_USAGE}")
    if "lines" in request:
        if command != "tail":
            raise ValueError(_USAGE)
        try:
            request["lines"] = int(request["lines"])
        except ValueError:
            raise ValueError(f"tail: not a line count: {request['lines']!r}") from None
    return request


class _Follower:
    """The output lines waiting for one ``tail`` client (bounded: a slow one loses lines)."""

    def __init__(self, limit: int = 1000) -> None:
        self.lines: collections.deque[tuple[int, str, str, str]] = collections.deque()
        self.limit = limit
        self.dropped = 0
        self.wakeup = asyncio.Event()

    def push(self, item: tuple[int, str, str, str]) -> None:
        if len(self.lines) >= self.limit:
            self.dropped += 1
        else:
            self.lines.append(item)
        self.wakeup.set()


def control_directory(create: bool = True) -> str:
    """The per-user directory of control sockets, private to this user.

    ``$XDG_RUNTIME_DIR/anycore`` when that variable is set, else
    ``anycore-UID`` in the temporary directory.  It is created mode 0700; an
    existing one must be a real directory owned by this user and reachable by
    no one else.

    Raises:
        ControlSocketError: the directory is another user's, a symlink, or
            open to other users.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        path = os.path.join(runtime, "anycore")
    else:
        path = os.path.join(tempfile.gettempdir(), f"anycore-{os.getuid()}")
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    check_private_directory(path)
    return path


def check_private_directory(path: str) -> None:
    """Refuse ``path`` unless it is a directory of this user, mode 0700 or stricter.

    Raises:
        ControlSocketError: it is not.
        FileNotFoundError: it does not exist.
    """
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ControlSocketError(f"{path} is not a directory (a symlink or file is refused)")
    if st.st_uid != os.getuid():
        raise ControlSocketError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): refusing it; "
            "remove it or set XDG_RUNTIME_DIR / --socket"
        )
    if st.st_mode & 0o077:
        raise ControlSocketError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; other users may reach it: "
            "refusing it (chmod 700 it, or remove it)"
        )


def peer_uid(sock: Any) -> int | None:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED).

    ``None`` where the platform does not tell (then the 0700 directory and the
    0600 socket file are the only guard).
    """
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return None
    size = struct.calcsize("3i")
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, size))
    return int(uid)


def bind_private_unix(path: str) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 from its first moment.

    It is bound inside a fresh 0700 directory beside ``path``, made 0600 and
    renamed into place, so no other user can connect in between.  A stale
    socket file of ours is replaced.

    Raises:
        RuntimeStateError: a supervisor of this user listens there already.
        ControlSocketError: the file there is not a socket, or another user's.
    """
    path = os.path.abspath(path)
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlSocketError(f"{path} exists and is not a socket: refusing to replace it")
        if st.st_uid not in _TRUSTED_UIDS:
            raise ControlSocketError(
                f"{path} belongs to uid {st.st_uid}, not to you: refusing it (remove it)"
            )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except OSError:
                pass  # stale: nobody listens; replaced below
            else:
                raise RuntimeStateError(f"another supervisor is listening on {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    parent = os.path.dirname(path)
    if len(os.fsencode(os.path.join(parent, ".anycore-XXXXXXXX", "s"))) >= _SUN_PATH_MAX:
        # No room for the private directory in sun_path: bind in place under
        # a umask that makes the file 0600 (process-wide, for one system call).
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            old = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        return sock
    private = tempfile.mkdtemp(prefix=".anycore-", dir=parent)
    temporary = os.path.join(private, "s")
    try:
        sock.bind(temporary)
        os.chmod(temporary, 0o600)
        sock.listen(64)
        os.rename(temporary, path)
    except BaseException:
        sock.close()
        _unlink_quietly(temporary)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(private)
    sock.setblocking(False)
    return sock


_SUN_PATH_MAX = 108  # Linux's sockaddr_un.sun_path, NUL included


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
