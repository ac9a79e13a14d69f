# What a supervised program is: its definition and its status snapshots.
#
# What this module owns: ``Program`` (a frozen description of what to run and how to
# treat it, validated when made), ``ProgramState`` (supervisord's state names),
# ``ProgramStatus`` (the snapshot ``Supervisor.status()`` and ``anycore ctl`` report),
# ``UnknownProgram``, and ``exec_form`` (how a one-command shell string is run).
# Nothing here runs anything: ``_instance`` is the state machine that runs one
# instance of a ``Program``, ``_supervisor`` the set of them.
#
# Design choices:
#   * ``Program`` is a frozen dataclass compared by its whole definition (``env``
#     included, sorted), so a reload restarts exactly the programs whose definition
#     changed; it hashes by name.  Lists (from TOML or JSON) become tuples.
#   * A one-command shell string is run as ``exec command`` so the pid supervised
#     is the program's and signals reach it directly; lists, pipelines, compound
#     commands and shell builtins are left to the shell.
#   * Every bad option is refused in ``__post_init__`` with the program's name in
#     the message (the stack-file loader adds the file and line).
from __future__ import annotations

import enum
import re
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from ..errors import AnycoreError

__all__ = [
    "Program",
    "ProgramState",
    "ProgramStatus",
    "UnknownProgram",
    "exec_form",
]

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
        kill_tree: (Linux) run a command under a subreaper keeper, so that
            stopping it also ends what left its process group (``setsid``
            daemons, double forks); see ``Process(kill_tree=True)``.
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
    kill_tree: bool = False
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
        if self.kill_tree and self.target is not None:
            raise ValueError(
                f"program {self.name!r}: kill_tree applies to a command or a server,"
                " not to a target (a ChildProcess dies with its parent already)"
            )
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
