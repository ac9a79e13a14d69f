# Stack files: the text form of a Supervisor's programs.
#
# What this module owns: reading a stack description into ``Program`` objects,
# from either of two forms, chosen by the file name:
#   * a Procfile (``name: command`` lines, ``#`` comments, blank lines), the form
#     foreman / honcho / Heroku made familiar; every command runs through the shell;
#   * TOML (``*.toml``, parsed with tomllib), one ``[programs.NAME]`` table per
#     program with every option of ``Program`` plus a ``[supervisor]`` table
#     (``control_socket``, ``forward_signals``).
# ``load_env_file`` reads a ``.env`` file (``KEY=VALUE`` lines, honcho's form) whose
# values ``with_env`` gives every program, under the program's own ``env``.
# Every error names the file and the line (TOML: the line of the offending key or
# table, found by scanning the text, since tomllib does not keep positions) and is a
# ``StackFileError``.  Rejected: supervisord's INI dialect (``%(here)s``
# interpolation, program:name sections) - TOML types the values for us.
from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import StackFileError
from ._control import parse_signal
from ._program import Program

__all__ = ["Stack", "load_env_file", "load_stack", "parse_procfile", "parse_stack_toml", "with_env"]

_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_PROC_LINE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*:(.*)$")


@dataclass(frozen=True)
class Stack:
    """A parsed stack file.

    Attributes:
        path: the file it came from.
        programs: the programs, in file order.
        control_socket: the ``[supervisor] control_socket`` path, if given.
        forward_signals: the ``[supervisor] forward_signals``: signals sent on
            to every program when the supervisor gets them.
    """

    path: str
    programs: tuple[Program, ...]
    control_socket: str | None = None
    forward_signals: tuple[int, ...] = ()


def load_stack(path: str | os.PathLike[str]) -> Stack:
    """Read a stack file: TOML when the name ends in ``.toml``, else a Procfile.

    Raises:
        StackFileError: the file cannot be read or has an error (with its line).
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise StackFileError(name, None, f"cannot read the stack file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise StackFileError(name, None, f"not UTF-8 text: {exc}") from None
    if name.endswith(".toml"):
        return parse_stack_toml(text, name)
    return parse_procfile(text, name)


def parse_procfile(text: str, path: str = "<Procfile>") -> Stack:
    """Parse ``name: command`` lines (``#`` comments and blank lines ignored).

    Raises:
        StackFileError: a malformed line, an empty command or a duplicate name.
    """
    programs: list[Program] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _PROC_LINE.match(line)
        if m is None:
            raise StackFileError(path, number, f"expected 'name: command', got {stripped!r}")
        name, command = m.group(1), m.group(2).strip()
        if not command:
            raise StackFileError(path, number, f"program {name!r} has no command")
        if name in seen:
            raise StackFileError(
                path, number, f"duplicate program {name!r} (first on line {seen[name]})"
            )
        seen[name] = number
        programs.append(Program(name, command=command))
    if not programs:
        raise StackFileError(path, None, "no programs defined")
    return Stack(path, tuple(programs))


# -- TOML ----------------------------------------------------------------------------

_FIELDS = {f.name for f in fields(Program)} - {"name", "target", "pass_fds"}
_SUPERVISOR_KEYS = {"control_socket", "forward_signals"}
_FLOATS = {
    "backoff_initial",
    "backoff_max",
    "backoff_jitter",
    "restart_window",
    "grace_period",
    "ready_delay",
    "ready_timeout",
    "idle_timeout",
    "frame_deadline",
    "min_receive_rate",
}
_INTS = {"max_restarts", "numprocs", "max_connections"}
_BOOLS = {"ready_notify", "capture_output", "kill_tree"}
_STRS = {"server", "restart", "ready_line", "cwd", "hint", "on_limit"}
_STR_LISTS = {"binds", "depends_on"}


class _Locator:
    """Finds the line of a table or a key in TOML text (tomllib keeps none)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def table(self, *names: str) -> int | None:
        parts = r"\s*\.\s*".join(rf"(?:{re.escape(n)}|\"{re.escape(n)}\")" for n in names)
        pattern = re.compile(rf"^\s*\[\s*{parts}\s*\]")
        for i, line in enumerate(self.lines, 1):
            if pattern.match(line):
                return i
        return None

    def key(self, table: tuple[str, ...], key: str) -> int | None:
        start = self.table(*table) if table else 0
        if start is None:
            return None
        pattern = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=")
        # Lines after the header (index `start` is the line after it), up to the
        # next table header.
        for i in range(start, len(self.lines)):
            line = self.lines[i]
            if line.lstrip().startswith("["):
                break
            if pattern.match(line):
                return i + 1
        return start or None


def _signal_number(value: object, key: str = "stop_signal") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{key} must be a signal name or number")
    return parse_signal(value)


def _convert(key: str, value: object) -> object:
    if key == "command":
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError("command must be a string or a non-empty list of strings")
    if key == "stop_signal":
        return _signal_number(value)
    if key == "env":
        if not isinstance(value, Mapping):
            raise ValueError("env must be a table of strings")
        env: dict[str, str] = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise ValueError(f"env.{k} must be a string")
            env[str(k)] = str(v)
        return env
    if key == "ready_port":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError("ready_port must be a port number or 'host:port'")
        return value
    if key in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number")
        return float(value)
    if key in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer")
        return value
    if key in _BOOLS:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false")
        return value
    if key in _STRS:
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string")
        return value
    if key in _STR_LISTS:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError(f"{key} must be a list of strings")
    raise ValueError(f"unknown option {key!r}")  # pragma: no cover - filtered before


def parse_stack_toml(text: str, path: str = "<stack.toml>") -> Stack:
    """Parse the TOML form: ``[supervisor]`` and one ``[programs.NAME]`` per program.

    Keys of a program table are :class:`~anycore.Program`'s fields (``command``
    as a string or a list, ``stop_signal`` as a name like ``"SIGINT"``), plus
    ``hint``: how to talk to the program, printed by ``anycore supervise``.
    A relative ``cwd`` is relative to the stack file's directory.

    Raises:
        StackFileError: invalid TOML, an unknown key, a bad value (each with its
            line), a missing command, unknown or cyclic dependencies.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+)", str(exc))
        raise StackFileError(path, int(m.group(1)) if m else None, f"invalid TOML: {exc}") from None
    where = _Locator(text)
    for key in data:
        if key not in ("supervisor", "programs"):
            raise StackFileError(
                path,
                where.table(key) or where.key((), key),
                f"unknown table {key!r} (expected [supervisor] and [programs.NAME])",
            )
    sup = data.get("supervisor", {})
    if not isinstance(sup, dict):
        raise StackFileError(path, where.key((), "supervisor"), "supervisor must be a table")
    for key in sup:
        if key not in _SUPERVISOR_KEYS:
            raise StackFileError(
                path, where.key(("supervisor",), key), f"unknown [supervisor] option {key!r}"
            )
    control = sup.get("control_socket")
    if control is not None and not isinstance(control, str):
        raise StackFileError(
            path, where.key(("supervisor",), "control_socket"), "control_socket must be a string"
        )
    forward: list[int] = []
    value = sup.get("forward_signals", [])
    where_forward = where.key(("supervisor",), "forward_signals")
    if not isinstance(value, list):
        raise StackFileError(path, where_forward, "forward_signals must be a list of signals")
    for item in value:
        try:
            forward.append(_signal_number(item, "forward_signals"))
        except ValueError as exc:
            raise StackFileError(path, where_forward, str(exc)) from None
    base = os.path.dirname(os.path.abspath(path)) if not path.startswith("<") else os.getcwd()
    if control is not None and not os.path.isabs(control):
        control = os.path.join(base, control)
    tables = data.get("programs")
    if not isinstance(tables, dict) or not tables:
        raise StackFileError(path, None, "no programs defined (add a [programs.NAME] table)")
    programs: list[Program] = []
    for name, table in tables.items():
        line = where.table("programs", name)
        if not _NAME.fullmatch(name):
            raise StackFileError(
                path, line, f"invalid program name {name!r} (letters, digits, _ . -)"
            )
        if not isinstance(table, dict):
            raise StackFileError(path, line, f"programs.{name} must be a table")
        options: dict[str, Any] = {}
        for key, value in table.items():
            key_line = where.key(("programs", name), key)
            if key not in _FIELDS:
                raise StackFileError(path, key_line, f"programs.{name}: unknown option {key!r}")
            try:
                options[key] = _convert(key, value)
            except ValueError as exc:
                raise StackFileError(path, key_line, f"programs.{name}: {exc}") from None
        if not any(k in options for k in ("command", "server")):
            raise StackFileError(path, line, f"program {name!r} has no command (or server)")
        cwd = options.get("cwd")
        if isinstance(cwd, str) and not os.path.isabs(cwd):
            options["cwd"] = os.path.normpath(os.path.join(base, cwd))
        try:
            programs.append(Program(name, **options))
        except (ValueError, TypeError) as exc:
            raise StackFileError(path, line, str(exc)) from None
    from ._supervisor import Supervisor

    try:
        Supervisor._topological(programs)
    except ValueError as exc:
        raise StackFileError(path, None, str(exc)) from None
    return Stack(path, tuple(programs), control, tuple(forward))


# -- .env files ------------------------------------------------------------------------

_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_MAX_ENV_FILE = 1024 * 1024


def _env_value(raw: str) -> str | None:
    """The value of a ``.env`` line: quoted (single: literal; double: backslash
    escapes) or bare (up to a `` #`` comment); ``None`` when a quote is unclosed."""
    if raw[:1] == "'":
        end = raw.find("'", 1)
        return None if end < 0 else raw[1:end]
    if raw[:1] == '"':
        out: list[str] = []
        i = 1
        escapes = {"n": "\n", "t": "\t", "r": "\r"}
        while i < len(raw):
            ch = raw[i]
            if ch == "\\" and i + 1 < len(raw):
                out.append(escapes.get(raw[i + 1], raw[i + 1]))
                i += 2
            elif ch == '"':
                return "".join(out)
            else:
                out.append(ch)
                i += 1
        return None
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip()


def load_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a ``.env`` file as honcho and foreman do: ``KEY=VALUE`` lines.

    ``export KEY=VALUE`` is accepted, ``#`` lines and blank lines are skipped,
    a value may be single-quoted (literal), double-quoted (``\\n``, ``\\"``
    escapes) or bare (a `` #`` starts a comment).

    Raises:
        StackFileError: unreadable, over 1 MiB, or a line that is not ``KEY=VALUE``.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read(_MAX_ENV_FILE + 1)
    except OSError as exc:
        raise StackFileError(name, None, f"cannot read the env file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise StackFileError(name, None, f"not UTF-8 text: {exc}") from None
    if len(text) > _MAX_ENV_FILE:
        raise StackFileError(name, None, "the env file is over 1 MiB")
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _ENV_LINE.match(line)
        value = _env_value(m.group(2)) if m else None
        if m is None or value is None:
            raise StackFileError(name, number, f"expected KEY=VALUE, got {stripped!r}")
        values[m.group(1)] = value
    return values


def with_env(stack: Stack, env: Mapping[str, str]) -> Stack:
    """``stack`` with ``env`` under every program's own ``env`` (which wins)."""
    if not env:
        return stack
    programs = tuple(dataclasses.replace(p, env={**env, **p.env}) for p in stack.programs)
    return dataclasses.replace(stack, programs=programs)
