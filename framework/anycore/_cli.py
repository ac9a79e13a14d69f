"""The ``anycore`` command line (argparse, with its conventions).

Commands: ``run`` (serve a handler class on endpoints, or run an async main;
``--workers N`` supervised processes sharing the port), ``supervise`` (run a
stack file, ./Procfile by default, with ./.env), ``ctl`` (talk to a running
supervisor of this user: status, start/stop/restart, signal, tail),
``examples`` (list the runnable examples, from the checkout or the copy in the
wheel).  Usage errors exit with status 2 as argparse does; expected failures
(a port in use, an unknown module) print one line and exit 1 or 2, never a
traceback; ``run`` checks its arguments before importing the target.  Commands
import what they need lazily so ``anycore --help`` stays fast.  The standard
options (loop, log level/format, workers) are public for users' own parsers:
``add_standard_options`` / ``apply_standard_options``.

Output: each line is written with its newline in one write(2) (``_emit``):
``print()`` writes the newline separately and a log thread's line could land
in between under ``> f 2>&1``.  Anything printed from the control socket has
its control characters escaped.  Prefix colours only on a tty without NO_COLOR.

Worker processes share a port through SO_REUSEPORT: the parent binds (without
listening) to reserve the port, resolve port 0 and report a port in use before
any worker starts; each worker binds the same address with SO_REUSEPORT and the
kernel spreads connections over them by address hash.  Rejected as the default: one
socket inherited by every worker (gunicorn's model), where whichever process
wakes first accepts, which on a lightly loaded machine leaves one worker doing
nearly everything; it is still what ``--fd`` and Unix-socket binds use.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import errno
import importlib
import inspect
import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from ._version import __version__

logger = logging.getLogger("anycore.cli")

_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class UsageError(Exception):
    """A command-line mistake: printed as ``anycore CMD: error: ...``, exit 2."""

    status = 2


class CommandFailed(Exception):
    """An expected failure (port in use, no supervisor): one line, exit 1."""

    status = 1


# -- the parser ------------------------------------------------------------------------


_ArgumentContainer = argparse.ArgumentParser | argparse._ArgumentGroup


def add_standard_options(
    parser: _ArgumentContainer,
    *,
    loop: bool = True,
    log: bool = True,
    workers: bool = False,
    workers_help: str = "N worker processes (default: 1)",
) -> _ArgumentContainer:
    """Add anycore's standard options to your own argparse parser (or group).

    ``--loop auto|uvloop|asyncio``, ``--log-level LEVEL``, ``--log-format
    console|json`` and, with ``workers=True``, ``--workers N`` (an integer of
    at least 1).  The ``anycore`` command uses the same options.  Then call
    :func:`apply_standard_options` on the parsed namespace::

        parser = argparse.ArgumentParser()
        parser.add_argument("--port", type=int, default=8000)
        anycore.add_standard_options(parser, workers=True)
        args = parser.parse_args()
        anycore.run(main, args, **anycore.apply_standard_options(args))

    Returns:
        ``parser``, for chaining.
    """
    if loop:
        parser.add_argument(
            "--loop",
            default="auto",
            choices=("auto", "uvloop", "asyncio"),
            help="event loop (default: auto, uvloop when installed)",
        )
    if log:
        parser.add_argument(
            "--log-level",
            default="INFO",
            type=str.upper,
            choices=_LEVELS,
            help="the lowest level logged (default: INFO)",
        )
        parser.add_argument(
            "--log-format",
            default="console",
            choices=("console", "json"),
            help="console lines or one JSON object per line (default: console)",
        )
    if workers:
        parser.add_argument("--workers", type=_positive, default=1, metavar="N", help=workers_help)
    return parser


def apply_standard_options(args: argparse.Namespace) -> dict[str, Any]:
    """Act on the options :func:`add_standard_options` added.

    Configures logging (``anycore.logging.configure``) from ``--log-level``
    and ``--log-format`` when they were added.

    Returns:
        The keyword arguments for :func:`anycore.run` (``{"loop": ...}``, empty
        without ``--loop``).
    """
    level = getattr(args, "log_level", None)
    if level is not None:
        _configure_logging(level, getattr(args, "log_format", "console"))
    loop = getattr(args, "loop", None)
    return {} if loop is None else {"loop": loop}


def _add_server_options(p: argparse.ArgumentParser) -> None:
    """``serve()``'s connection limits, for handler targets (stack keys of the same names)."""
    g = p.add_argument_group("connection limits (stream handlers)")
    g.add_argument(
        "--max-connections", type=_positive, metavar="N", help="at most N open connections"
    )
    g.add_argument(
        "--on-limit",
        choices=("shed", "refuse", "hold"),
        default=None,
        help="at --max-connections: shed the oldest idle/slow one (default), refuse "
        "the new one, or hold it in the backlog",
    )
    g.add_argument(
        "--idle-timeout", type=_seconds, metavar="S", help="close a connection idle S seconds"
    )
    g.add_argument(
        "--frame-deadline",
        type=_seconds,
        metavar="S",
        help="close a connection that takes over S seconds to complete a frame it began",
    )
    g.add_argument(
        "--min-receive-rate",
        type=_seconds,
        metavar="BPS",
        help="close a connection receiving under BPS bytes a second mid-frame",
    )


_SERVER_OPTIONS = ("max_connections", "on_limit", "idle_timeout", "frame_deadline",
                   "min_receive_rate")  # fmt: skip


def _server_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in _SERVER_OPTIONS if getattr(args, k, None) is not None}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _fd(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a file descriptor: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a file descriptor: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="anycore",
        description="anycore: asyncio networking and process orchestration.",
    )
    parser.add_argument("--version", action="version", version=f"anycore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="serve a handler class or run an async main",
        description=(
            "Run TARGET (module:attribute). A Handler subclass is served on the --bind "
            "endpoints (a DatagramHandler on udp:// ones); an async function is run as "
            "the application's main."
        ),
        epilog=(
            "example: anycore run examples.echo:EchoHandler --bind tcp://127.0.0.1:7001\n"
            "Systemd socket activation (LISTEN_FDS) is honoured; with NOTIFY_SOCKET set, "
            "READY=1 is sent once serving."
        ),
    )
    run.add_argument("target", metavar="module:target", help="what to run")
    run.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help="tcp://host:port, unix:///path, udp://host:port or tls://... (repeatable)",
    )
    run.add_argument(
        "--fd",
        action="append",
        default=[],
        type=_fd,
        metavar="N",
        help="serve the listening socket inherited as descriptor N (repeatable)",
    )
    add_standard_options(
        run,
        workers=True,
        workers_help="N supervised worker processes sharing the port (SIGHUP: rolling restart)",
    )
    _add_server_options(run)
    run.add_argument("--reuse-port", action="store_true", help="set SO_REUSEPORT on binds")
    run.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="directory put first on sys.path to import the target (default: .)",
    )
    run.set_defaults(handler=_cmd_run)

    sup = sub.add_parser(
        "supervise",
        help="run the programs of a stack file",
        description=(
            "Run every program of STACKFILE (./Procfile by default; TOML when it ends "
            "in .toml), with the variables of ./.env, restart them by policy, merge "
            "their output. SIGTERM/SIGINT stop the stack in reverse dependency order, "
            "SIGHUP re-reads the file, SIGUSR1 reopens the log file; the stack's "
            "[supervisor] forward_signals are also sent on to every program."
        ),
    )
    sup.add_argument(
        "stackfile", nargs="?", default="Procfile", help="Procfile or stack .toml (./Procfile)"
    )
    sup.add_argument(
        "-e",
        "--env",
        action="append",
        default=None,
        metavar="FILE",
        help="KEY=VALUE lines given to every program (repeatable; default: ./.env if present)",
    )
    sup.add_argument(
        "--socket", metavar="PATH", help="control socket (default: the stack's or a per-user one)"
    )
    sup.add_argument("--log-file", metavar="PATH", help="also write the merged log here")
    add_standard_options(sup)
    sup.set_defaults(handler=_cmd_supervise)

    ctl = sub.add_parser(
        "ctl",
        help="control a running supervisor",
        description=(
            "Ask a running 'anycore supervise' for status, to start/stop/restart a "
            "program, to send it a signal (signal NAME SIG) or to follow its output "
            "(tail NAME)."
        ),
        epilog=(
            "examples: anycore ctl status | anycore ctl restart web | "
            "anycore ctl signal web HUP | anycore ctl tail web -n 50"
        ),
    )
    ctl.add_argument("--socket", metavar="PATH", help="the supervisor's control socket")
    ctl.add_argument("--json", action="store_true", help="print the raw JSON reply")
    ctl.add_argument(
        "-n", "--lines", type=int, default=10, metavar="N", help="tail: lines of history first"
    )
    ctl.add_argument("action", choices=tuple(_CTL_ARGS))
    ctl.add_argument("name", nargs="?", help="program, instance (name:N) or 'all'")
    ctl.add_argument("signal", nargs="?", help="signal: the signal (HUP, SIGUSR1, 10 ...)")
    ctl.set_defaults(handler=_cmd_ctl)

    ex = sub.add_parser(
        "examples",
        help="list the runnable examples",
        description="List the examples in ./examples and how to start each.",
    )
    ex.add_argument("--dir", default=None, metavar="DIR", help="the examples directory")
    ex.set_defaults(handler=_cmd_examples)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        result: int = handler(args)
    except (UsageError, CommandFailed) as exc:
        print(f"anycore {args.command}: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `anycore examples | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return result


def default_control_socket(create: bool = True) -> str:
    """``$ANYCORE_CTL_SOCKET``, else ``supervisor.sock`` in the private control directory.

    The directory (``$XDG_RUNTIME_DIR/anycore`` or ``$TMPDIR/anycore-UID``) is
    created 0700 and checked: one of another user, or open to others, is refused.
    """
    env = os.environ.get("ANYCORE_CTL_SOCKET")
    if env:
        return env
    from ._supervise._supervisor import control_directory
    from .errors import ControlSocketError

    try:
        return os.path.join(control_directory(create), "supervisor.sock")
    except FileNotFoundError as exc:
        if create:
            raise CommandFailed(f"cannot create the control directory: {exc}") from None
        return os.path.join(str(exc.filename), "supervisor.sock")
    except ControlSocketError as exc:
        raise CommandFailed(str(exc)) from None


# -- logging -----------------------------------------------------------------------------


# honcho's palette, given to the sources in the order they first write.
_COLOURS = ("36", "33", "32", "35", "34", "31", "1;36", "1;33", "1;32", "1;35", "1;34", "1;31")


def _wants_colour(stream: Any) -> bool:
    """Colour on a terminal, unless NO_COLOR is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _PrefixFormatter(logging.Formatter):
    """``program  | message``: one column per source, as foreman prints.

    With ``colour``, each source's prefix has its own colour (honcho's way).
    """

    def __init__(self, width: int = 10, colour: bool = False) -> None:
        super().__init__()
        self.width = width
        self.colour = colour
        self._colours: dict[str, str] = {}

    def _prefix(self, source: str) -> str:
        prefix = f"{source:<{self.width}} |"
        if not self.colour:
            return prefix
        code = self._colours.get(source)
        if code is None:
            code = _COLOURS[len(self._colours) % len(_COLOURS)]
            if len(self._colours) < 1024:  # bounded: instance names are few
                self._colours[source] = code
        return f"\x1b[{code}m{prefix}\x1b[0m"

    def format(self, record: logging.LogRecord) -> str:
        source = getattr(record, "program", None)
        if source is None or not record.name.startswith("anycore.program."):
            source = "supervisor"
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.name.startswith("anycore.program."):
            return f"{self._prefix(source)} {text}"
        level = "" if record.levelno == logging.INFO else f"{record.levelname}: "
        return f"{self._prefix(source)} {level}{text}"


def _configure_logging(level: str, fmt: str) -> None:
    from .logging import configure

    configure(level=level, format=fmt)  # type: ignore[arg-type]


def _flush_logs() -> None:
    with contextlib.suppress(Exception):
        from .logging import flush_all

        flush_all()


def _stream_handler(stream: Any) -> logging.Handler:
    from .logging import StreamHandler

    return StreamHandler(stream)


def _file_handler(path: str) -> logging.Handler:
    # Watched: a file moved or deleted by logrotate is reopened on the next write
    # (checked once per batch by anycore's writer thread), so SIGUSR1 has nothing
    # to race with.
    from .logging import WatchedFileHandler

    return WatchedFileHandler(path)


# -- run -------------------------------------------------------------------------------------


def _load_target(spec: str, app_dir: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"the target must be module:attribute, not {spec!r}")
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise UsageError(
                f"cannot import {module_name!r}: no module named {missing!r} "
                f"(searched {path} and the installed packages)"
            ) from None
        raise
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _kind(target: Any) -> str:
    from ._net._datagram import DatagramHandler
    from ._net._handler import Handler

    if isinstance(target, type) and issubclass(target, Handler):
        return "stream"
    if isinstance(target, type) and issubclass(target, DatagramHandler):
        return "datagram"
    if inspect.iscoroutinefunction(target):
        return "main"
    raise UsageError(
        "the target must be a Handler subclass, a DatagramHandler subclass or an "
        f"async function, not {target!r}"
    )


def _static_kind(spec: str, app_dir: str) -> str | None:
    """What ``module:attr`` names, read from the module's source without running it.

    ``"main"`` (an ``async def``), ``"class"``, or ``None`` when the source does
    not say (no source, an attribute made at run time).  Finding the module may
    import its parent packages, not the module itself.
    """
    import importlib.util

    module_name, _, attr = spec.partition(":")
    if "." in attr:
        return None
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    origin = found.origin if found is not None else None
    if not origin or not origin.endswith(".py"):
        return None
    try:
        with open(origin, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return None
    kind = None
    for node in tree.body:  # the last definition wins, as at run time
        if isinstance(node, ast.AsyncFunctionDef) and node.name == attr:
            kind = "main"
        elif isinstance(node, ast.ClassDef) and node.name == attr:
            kind = "class"
        elif isinstance(node, (ast.FunctionDef, ast.Assign, ast.AnnAssign, ast.ImportFrom)):
            names = (
                [node.name]
                if isinstance(node, ast.FunctionDef)
                else [a.asname or a.name for a in node.names]
                if isinstance(node, ast.ImportFrom)
                else [t.id for t in ast.walk(node) if isinstance(t, ast.Name)]
            )
            if attr in names:
                kind = None
    return kind


def _check_kind(kind: str, args: argparse.Namespace, inherited: bool) -> None:
    if kind == "main":
        if args.bind or inherited or args.workers > 1:
            raise UsageError("--bind, --fd and --workers apply to handler targets only")
    elif not args.bind and not inherited:
        raise UsageError("a handler target needs --bind ENDPOINT (or --fd N)")


def _inherited_sockets(fds: list[int]) -> list[socket.socket]:
    """The sockets of ``--fd N``, each checked to be an open stream socket."""
    import stat

    for fd in fds:
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            raise UsageError(f"--fd {fd}: descriptor {fd} is not open in this process") from None
        if not stat.S_ISSOCK(mode):
            raise UsageError(f"--fd {fd}: descriptor {fd} is not a socket")
    socks = [socket.socket(fileno=fd) for fd in fds]
    for sock in socks:
        if sock.type != socket.SOCK_STREAM:
            raise UsageError(f"--fd {sock.fileno()}: not a stream socket")
    return socks


def _cmd_run(args: argparse.Namespace) -> int:
    # Everything that can be checked without importing the target is checked
    # first: importing runs the module's code.
    module_name, sep, attr = args.target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"the target must be module:attribute, not {args.target!r}")
    from ._net._endpoints import parse_endpoint
    from ._supervise._systemd import listen_fds
    from .errors import EndpointError

    try:
        endpoints = [parse_endpoint(b) for b in args.bind]
    except EndpointError as exc:
        raise UsageError(str(exc)) from None
    inherited = _inherited_sockets(args.fd)
    inherited += listen_fds()
    static = _static_kind(args.target, args.app_dir)
    if static is not None:
        _check_kind("stream" if static == "class" else static, args, bool(inherited))
    target = _load_target(args.target, args.app_dir)
    kind = _kind(target)
    _check_kind(kind, args, bool(inherited))
    for ep in endpoints:
        if (ep.scheme == "udp") != (kind == "datagram"):
            what = "a DatagramHandler" if kind == "datagram" else "a stream Handler"
            raise UsageError(f"{ep}: {what} cannot be served on a {ep.scheme} endpoint")
    if inherited and kind == "datagram":
        raise UsageError("inherited sockets (--fd, LISTEN_FDS) must be stream sockets")
    if kind != "stream" and _server_kwargs(args):
        names = ", ".join("--" + k.replace("_", "-") for k in _server_kwargs(args))
        raise UsageError(f"{names}: for stream handler targets only")
    _configure_logging(args.log_level, args.log_format)
    from ._core._runtime import GracefulExit, run
    from .errors import LoopUnavailable

    try:
        if kind == "main":
            run(_main_wrapper(target), loop=args.loop)
        elif args.workers > 1:
            args.app_dir_abs = os.path.abspath(args.app_dir)
            run(_workers_main, args, endpoints, inherited, loop=args.loop, shutdown_timeout=30.0)
        else:
            run(_serve_main, target, kind, endpoints, inherited, args.reuse_port,
                _server_kwargs(args), loop=args.loop)  # fmt: skip
    except GracefulExit:
        return 0
    except LoopUnavailable as exc:
        raise CommandFailed(str(exc)) from None
    except OSError as exc:
        raise CommandFailed(_describe_oserror(exc, args.bind)) from None
    finally:
        _flush_logs()
    return 0


def _describe_oserror(exc: OSError, binds: Sequence[str]) -> str:
    where = ", ".join(binds) or "the inherited socket"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: address already in use (is another server running?)"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: address not available on this machine"
    return f"{where}: {exc.strerror or exc}"


def _main_wrapper(target: Any) -> Any:
    async def main() -> None:
        from ._supervise._systemd import sd_notify

        sd_notify(f"READY=1\nMAINPID={os.getpid()}")
        await target()

    return main


async def _serve_main(
    target: Any,
    kind: str,
    endpoints: list[Any],
    inherited: list[socket.socket],
    reuse_port: bool,
    limits: dict[str, Any],
) -> None:
    from ._supervise._systemd import sd_notify

    async with contextlib.AsyncExitStack() as stack:
        bound: list[str] = []
        if kind == "stream":
            from ._net._server import serve

            # Inherited sockets (--fd, LISTEN_FDS, a unix socket bound by the
            # --workers parent) are served beside the --bind endpoints.
            server = await stack.enter_async_context(
                serve(target, *endpoints, reuse_port=reuse_port, sockets=inherited, **limits)
            )
            bound += [str(e) for e in server.endpoints]
        else:
            from ._net._datagram_server import serve_datagram

            dgram = await stack.enter_async_context(
                serve_datagram(target, *endpoints, reuse_port=reuse_port)
            )
            bound += [str(e) for e in dgram.endpoints]
        _emit(f"anycore: pid {os.getpid()} serving on {', '.join(bound)}")
        sd_notify(f"READY=1\nMAINPID={os.getpid()}")
        try:
            await asyncio.Event().wait()
        finally:
            sd_notify("STOPPING=1")


def _reserve(ep: Any) -> tuple[socket.socket, str]:
    """Bind (without listening) with SO_REUSEPORT: reserves the port for the workers."""
    infos = socket.getaddrinfo(
        ep.host,
        ep.port,
        type=socket.SOCK_DGRAM if ep.scheme == "udp" else socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    host_text = f"[{host}]" if family == socket.AF_INET6 else host
    query = "?" + "&".join(f"{k}={v}" for k, v in ep.options) if ep.options else ""
    return sock, f"{ep.scheme}://{host_text}:{port}{query}"


async def _workers_main(
    args: argparse.Namespace, endpoints: list[Any], inherited: list[socket.socket]
) -> None:
    from ._core._runtime import current_runtime
    from ._supervise._supervisor import Program, ProgramState, Supervisor
    from ._supervise._systemd import sd_notify

    with contextlib.ExitStack() as keep:
        binds: list[str] = []
        fds: list[int] = []
        for ep in endpoints:
            if ep.scheme == "unix":
                # One listening socket for all: bound here, inherited by the workers.
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                keep.callback(sock.close)
                with contextlib.suppress(FileNotFoundError):
                    if not _is_live_unix(ep.path):
                        os.unlink(ep.path)
                sock.bind(ep.path)
                keep.callback(_unlink_quietly, ep.path)
                sock.listen(1024)
                fds.append(sock.fileno())
            else:
                sock, text = _reserve(ep)
                keep.callback(sock.close)
                binds.append(text)
        for sock in inherited:
            fds.append(sock.fileno())
        argv = [sys.executable, "-m", "anycore", "run", args.target]
        argv += ["--app-dir", args.app_dir_abs, "--loop", args.loop]
        argv += ["--log-level", args.log_level, "--log-format", args.log_format]
        for key, value in _server_kwargs(args).items():
            argv += ["--" + key.replace("_", "-"), str(value)]
        for text in binds:
            argv += ["--bind", text]
        for fd in fds:
            argv += ["--fd", str(fd)]
        if binds:
            argv.append("--reuse-port")
        program = Program(
            "worker",
            command=tuple(argv),
            numprocs=args.workers,
            ready_notify=True,
            restart="always",
            grace_period=20.0,
            pass_fds=tuple(fds),
            # The workers write their own (already formatted) lines to our
            # streams: captured, each would be rendered a second time here.
            capture_output=False,
        )
        async with Supervisor([program]) as sup:
            rt = current_runtime()
            if rt is not None:
                rt.add_reload_hook(lambda: sup.rolling_restart("worker", timeout=60.0))
            snapshot = await sup.wait_for(
                "worker",
                lambda s: all(x.ready or x.state is ProgramState.FATAL for x in s),
            )
            if all(x.state is ProgramState.FATAL for x in snapshot):
                raise CommandFailed("every worker failed to start (see the log above)")
            where = ", ".join(binds + [f"fd {fd}" for fd in fds])
            _emit(f"anycore: pid {os.getpid()} serving on {where} with {args.workers} workers")
            sd_notify(f"READY=1\nMAINPID={os.getpid()}")
            await sup.wait_for("worker", lambda s: all(x.state is ProgramState.FATAL for x in s))
            raise CommandFailed("every worker is FATAL: giving up")


def _is_live_unix(path: str | None) -> bool:
    if not path:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    raise CommandFailed(f"cannot listen on unix://{path}: another server is listening there")


def _unlink_quietly(path: str | None) -> None:
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)


# -- supervise ---------------------------------------------------------------------------------


def _load_supervised(args: argparse.Namespace) -> Any:
    """The stack file with the ``.env`` values applied (what SIGHUP re-reads too)."""
    from ._supervise._stackfile import load_env_file, load_stack, with_env

    stack = load_stack(args.stackfile)
    env: dict[str, str] = {}
    files = args.env if args.env is not None else [f for f in [".env"] if os.path.isfile(f)]
    for name in files:
        env.update(load_env_file(name))
    return with_env(stack, env)


def _cmd_supervise(args: argparse.Namespace) -> int:
    from .errors import StackFileError

    try:
        stack = _load_supervised(args)
    except StackFileError as exc:
        raise CommandFailed(str(exc)) from None
    control = args.socket or stack.control_socket or default_control_socket()
    width = max([10, *(len(n) for p in stack.programs for n in p.instance_names())])
    handlers = _setup_supervise_logging(args, width)
    from ._core._runtime import GracefulExit, run
    from .errors import ControlSocketError, LoopUnavailable, RuntimeStateError

    grace = sum(p.grace_period for p in stack.programs) + 10.0
    try:
        run(_supervise_main, args, stack, control, handlers, loop=args.loop,
            shutdown_timeout=grace)  # fmt: skip
    except GracefulExit:
        return 0
    except (RuntimeStateError, LoopUnavailable, ControlSocketError) as exc:
        raise CommandFailed(str(exc)) from None
    except OSError as exc:
        raise CommandFailed(f"control socket {control}: {exc.strerror or exc}") from None
    finally:
        _flush_logs()
    return 0


def _setup_supervise_logging(args: argparse.Namespace, width: int) -> list[logging.Handler]:
    root = logging.getLogger()
    if args.log_format == "json":
        from .logging import configure

        return list(configure(level=args.log_level, format="json", file=args.log_file))
    root.setLevel(args.log_level)
    handlers = [_stream_handler(sys.stdout)]
    if args.log_file:
        handlers.append(_file_handler(args.log_file))
    for h in handlers:
        colour = h is handlers[0] and _wants_colour(sys.stdout)
        h.setFormatter(_PrefixFormatter(width, colour=colour))
        root.addHandler(h)
    return handlers


def _banner(stack: Any, control: str) -> str:
    lines = [f"anycore supervise {stack.path}: {len(stack.programs)} programs"]
    for p in stack.programs:
        what = f"{p.server} on {', '.join(p.binds)}" if p.server else p.argv(0)
        if isinstance(what, list):
            what = " ".join(what)
        lines.append(f"  {p.name:<12} {what}")
        if p.hint:
            lines.append(f"  {'':<12} try: {p.hint}")
    lines.append(f"  control: anycore ctl --socket {control} status")
    lines.append("  Ctrl-C stops the stack; SIGHUP reloads the file.")
    return "\n".join(lines)


async def _supervise_main(
    args: argparse.Namespace, stack: Any, control: str, handlers: list[logging.Handler]
) -> None:
    from ._core._runtime import current_runtime
    from ._core._signals import on_signal
    from ._supervise._supervisor import Supervisor
    from ._supervise._systemd import sd_notify
    from .errors import StackFileError

    _emit(_banner(stack, control))
    async with Supervisor(
        stack.programs, control_socket=control, forward_signals=stack.forward_signals
    ) as sup:

        async def reload() -> None:
            try:
                new = _load_supervised(args)
            except StackFileError as exc:
                logger.error("reload refused: %s", exc)
                return
            try:
                await sup.reload(new.programs)
            except ValueError as exc:
                logger.error("reload refused: %s", exc)

        def reopen(_sig: int) -> None:
            import logging.handlers

            for h in handlers:
                if isinstance(h, logging.handlers.WatchedFileHandler):
                    continue  # reopens a moved file itself, with the record below
                if type(h) is logging.FileHandler:  # the stdlib's: writes via h.stream
                    h.acquire()
                    try:
                        if h.stream is not None:
                            h.stream.close()
                        h.stream = h._open()
                    finally:
                        h.release()
                elif isinstance(h, logging.FileHandler):
                    # anycore.logging's writer thread owns its file; without a
                    # public reopen() it cannot be swapped from here.
                    logger.warning("cannot reopen %s: move it and restart", h.baseFilename)
            logger.info("log files reopened")

        rt = current_runtime()
        if rt is not None:
            rt.add_reload_hook(reload)
        with on_signal(signal.SIGUSR1, reopen):
            sd_notify(f"READY=1\nMAINPID={os.getpid()}")
            await sup.wait_closed()


# -- ctl ---------------------------------------------------------------------------------------

_CTL_ARGS = {"status": 0, "start": 1, "stop": 1, "restart": 1, "signal": 2, "tail": 1}
_MAX_REPLY = 16 * 1024 * 1024


def _cmd_ctl(args: argparse.Namespace) -> int:
    from ._supervise._supervisor import parse_signal

    wanted = _CTL_ARGS[args.action]
    given = [a for a in (args.name, args.signal) if a]
    if len(given) < wanted:
        usage = "NAME SIG (e.g. anycore ctl signal web HUP)" if wanted == 2 else "a program name"
        raise UsageError(f"{args.action} needs {usage}" + (" (or 'all')" if wanted == 1 else ""))
    if len(given) > max(wanted, 1):
        raise UsageError(f"{args.action} takes {max(wanted, 1)} argument(s), not {len(given)}")
    request = [args.action, *given]
    if args.action == "signal":
        try:
            request[2] = signal.Signals(parse_signal(args.signal)).name
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.action == "tail":
        request.append(str(args.lines))
    path = args.socket or default_control_socket(create=False)
    with _connect_control(path) as sock:
        sock.sendall(" ".join(request).encode() + b"\n")
        replies = _reply_lines(sock)
        reply = _decode_reply(next(replies, b""))
        if args.json and args.action != "tail":
            _emit(json.dumps(reply, indent=2))
        if not reply.get("ok"):
            raise CommandFailed(_printable(reply.get("error")))
        if args.action == "tail":
            sock.settimeout(None)  # follow until the supervisor ends or Ctrl-C
            for raw in replies:
                item = _decode_reply(raw)
                if args.json:
                    _emit(json.dumps(item))
                elif "dropped" in item:
                    _emit(f"... {_printable(item['dropped'])} lines dropped (a slow reader)")
                else:
                    name = _printable(item.get("name", "?"))
                    _emit(f"{name:<10} | {_printable(item.get('line', ''))}")
            return 0
    if not args.json:
        _emit(_status_table(reply.get("result", [])))
    return 0


def _connect_control(path: str) -> socket.socket:
    """A connection to the supervisor at ``path``, after checking it is this user's.

    The socket file must belong to this user (or root) and so must the process
    that accepted the connection (SO_PEERCRED), before any request is sent.
    """
    import stat

    from ._supervise._supervisor import _TRUSTED_UIDS, peer_uid

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CommandFailed(f"no supervisor is listening on {path}") from None
    except OSError as exc:
        raise CommandFailed(f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise CommandFailed(f"{path} is not a socket")
    if st.st_uid not in _TRUSTED_UIDS:
        raise CommandFailed(
            f"refusing {path}: it belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(300.0)
        sock.connect(path)
        uid = peer_uid(sock)
        if uid is not None and uid not in _TRUSTED_UIDS:
            raise CommandFailed(
                f"refusing {path}: it is served by a process of uid {uid}, not by you"
            )
    except ConnectionRefusedError:
        sock.close()
        raise CommandFailed(f"no supervisor is listening on {path}") from None
    except OSError as exc:
        sock.close()
        raise CommandFailed(f"{path}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def _reply_lines(sock: socket.socket) -> Any:
    """The reply lines from ``sock`` (each bounded), until the supervisor closes."""
    buffer = bytearray()
    while True:
        end = buffer.find(b"\n")
        if end >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            yield line
            continue
        if len(buffer) > _MAX_REPLY:
            raise CommandFailed("the reply is too large")
        try:
            chunk = sock.recv(65536)
        except OSError as exc:
            raise CommandFailed(f"reading the reply: {exc.strerror or exc}") from None
        if not chunk:
            if buffer:
                yield bytes(buffer)
            return
        buffer += chunk


def _decode_reply(raw: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(raw)
    except (ValueError, RecursionError):
        raise CommandFailed("the supervisor sent an unreadable reply") from None
    if not isinstance(reply, dict):
        raise CommandFailed("the supervisor sent an unreadable reply")
    return reply


# C0 and C1 controls (terminal escapes), DEL, and the bidi overrides.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _printable(value: object) -> str:
    """``value`` as text with control characters shown as ``\\xNN`` escapes."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def _emit(text: str, stream: Any = None) -> None:
    """Write ``text`` and its newline in one write(2).

    ``print()`` writes the newline separately; with a log handler's thread
    writing to the same file (``> f 2>&1``) a log line could land between the
    two and be glued to the line a script is waiting for.
    """
    stream = sys.stdout if stream is None else stream
    data = text + "\n"
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced stream (tests, IDEs)
        stream.write(data)
        stream.flush()
        return
    stream.flush()
    view = memoryview(data.encode(stream.encoding or "utf-8", "replace"))
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _status_table(rows: object) -> str:
    out = [f"{'NAME':<16} {'STATE':<9} {'PID':>7} {'UPTIME':>9} {'RESTARTS':>8}  DESCRIPTION"]
    if not isinstance(rows, list):
        raise CommandFailed("the supervisor sent an unreadable reply")
    for r in rows:
        try:
            uptime = "-" if r.get("uptime") is None else _duration(float(r["uptime"]))
            pid = "-" if r.get("pid") is None else _printable(r["pid"])
            fields = [_printable(r[k]) for k in ("name", "state", "restarts")]
        except (AttributeError, KeyError, TypeError, ValueError):
            raise CommandFailed("the supervisor sent an unreadable reply") from None
        name, state, restarts = fields
        out.append(
            f"{name:<16} {state.upper():<9} {pid:>7} {uptime:>9} "
            f"{restarts:>8}  {_printable(r.get('description', ''))}"
        )
    return "\n".join(out)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# -- examples ------------------------------------------------------------------------------------


# The examples shipped inside the wheel (pyproject.toml force-includes examples/).
_PACKAGED_EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_examples")


def _examples_dir(given: str | None) -> str | None:
    candidates = [given] if given else [
        os.path.join(os.getcwd(), "examples"),
        os.path.join(os.path.dirname(__file__), "..", "..", "examples"),
        _PACKAGED_EXAMPLES,
    ]  # fmt: skip
    for c in candidates:
        if c and os.path.isdir(c):
            return os.path.normpath(c)
    return None


def _cmd_examples(args: argparse.Namespace) -> int:
    where = _examples_dir(args.dir)
    if where is None:
        raise CommandFailed("no examples directory found (give one with --dir)")
    packaged = where == os.path.normpath(_PACKAGED_EXAMPLES)
    rel = where if packaged else os.path.relpath(where)
    module = "anycore._examples" if packaged else os.path.basename(where)
    if packaged:
        _emit(f"Examples installed with anycore, in {where}:\n")
    else:
        _emit(f"Examples in {rel} (run from the directory above it):\n")
    for name in sorted(os.listdir(where)):
        path = os.path.join(where, name)
        if name.endswith(".py") and not name.startswith("_"):
            _describe_example(path, rel, module, name)
    stacks = sorted(n for n in os.listdir(where) if n.endswith(".toml") or n == "Procfile")
    for name in stacks:
        _emit(f"{name}\n    the example stack\n    anycore supervise {rel}/{name}\n")
    return 0


def _describe_example(path: str, rel: str, package: str, name: str) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return
    doc = (ast.get_docstring(tree) or "").strip().splitlines()
    summary = doc[0] if doc else ""
    print(f"{name}\n    {summary}")
    print(f"    python {rel}/{name}")
    module = f"{package}.{name[:-3]}"
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(b) for b in node.bases]
            if any(b.endswith("Handler") for b in bases) and "Client" not in node.name:
                scheme = "udp" if any("Datagram" in b for b in bases) else "tcp"
                print(f"    anycore run {module}:{node.name} --bind {scheme}://127.0.0.1:PORT")
    print()
