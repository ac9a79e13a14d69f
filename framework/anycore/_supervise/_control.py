# The control socket, server side: how ``anycore ctl`` talks to a running supervisor.
#
# What this module owns: parsing control requests (``parse_signal`` and the request
# grammar), ``ControlServer`` (the listening socket, one task per connection,
# ``tail`` streaming) and the safety of the socket and its directory
# (``control_directory``, ``check_private_directory``, ``bind_private_unix``,
# ``peer_uid``).  What each request does is the ``Supervisor``'s
# (``handle_command``); this module reads requests and writes replies.
#
# Design choices:
#   * The protocol is one request line (``status``, ``start NAME``, ``signal NAME
#     SIG``, ``tail NAME`` or one flat JSON object, at most 4 KiB, nesting refused by
#     a bounded scan before ``json.loads`` recurses) and JSON reply lines, on asyncio
#     streams, at most ``_MAX_REQUESTS_PER_CONNECTION`` requests per connection.
#   * The socket is bound inside a fresh 0700 directory beside its path, made 0600
#     and renamed into place: 0600 from its first moment, whatever the umask (when
#     sun_path has no room for that directory: bound in place under umask 0177).
#     Each connection's SO_PEERCRED uid must be ours or root's before a byte is
#     read.  The default path is in a per-user 0700 directory whose owner and mode
#     are checked; a socket file is unlinked at close only if it is still ours.
#   * ``tail`` replays the last lines of each instance and feeds a follower through
#     a bounded buffer (a slow one loses lines, counted and reported); any input
#     or EOF from the client ends it.
#   * Rejected: XML-RPC over HTTP (supervisord), far more surface for a few verbs; a
#     LineHandler server, which cannot check the peer before the first frame nor
#     stream a tail as simply.
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import socket
import stat
import struct
import tempfile
from typing import TYPE_CHECKING, Any

from ..errors import ControlSocketError, RuntimeStateError
from ._program import UnknownProgram

if TYPE_CHECKING:
    from ._supervisor import Supervisor

__all__ = [
    "ControlServer",
    "bind_private_unix",
    "check_private_directory",
    "control_directory",
    "parse_signal",
    "peer_uid",
]

logger = logging.getLogger("anycore.supervisor")

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


class ControlServer:
    """The supervisor's control socket: accepts, checks the peer, serves requests.

    ``start(path)`` binds and begins accepting; ``aclose()`` stops accepting,
    cancels the connections and unlinks the socket file if it is still ours.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        self._sock: socket.socket | None = None
        self._accept: asyncio.Task[None] | None = None
        self._path: str | None = None
        self._inode = 0
        self._tasks: dict[asyncio.Task[None], socket.socket] = {}

    async def start(self, path: str) -> None:
        sock = bind_private_unix(path)
        self._sock = sock
        self._path = path
        self._inode = os.stat(path).st_ino
        self._accept = asyncio.get_running_loop().create_task(
            self._accept_loop(sock), name="supervisor control socket"
        )

    async def _accept_loop(self, listener: socket.socket) -> None:
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
            task = loop.create_task(self._serve(conn), name="supervisor control")
            self._tasks[task] = conn
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        conn = self._tasks.pop(task, None)
        if conn is not None:
            conn.close()
        if not task.cancelled() and task.exception() is not None:
            logger.error("control connection failed", exc_info=task.exception())

    async def aclose(self) -> None:
        listener, self._sock = self._sock, None
        if listener is None:
            return
        accept, self._accept = self._accept, None
        if accept is not None:
            accept.cancel()
            await asyncio.wait({accept})
        listener.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        path = self._path
        with contextlib.suppress(OSError):
            if path is not None and os.stat(path).st_ino == self._inode:
                os.unlink(path)  # only our own socket file, not a successor's

    async def _serve(self, conn: socket.socket) -> None:
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
                    reply = await self._sup.handle_command(text)
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
            insts = self._sup._select(name)
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
