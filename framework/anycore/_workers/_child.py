"""Python callables in child processes: ChildProcess and the machinery under it.

This module owns everything that runs a Python callable in another process:

* the start method (forkserver on Linux: the server is single-threaded, so
  forking it is safe however many threads the parent runs; spawn elsewhere);
* serialisation: pickle by default, cloudpickle when it is installed and pickle
  cannot carry the object (lambdas, closures, functions of ``__main__``), with
  code objects keeping their file name so remote tracebacks name the user's
  file; remote tracebacks start at the user's frame (the worker loop's are cut);
* a duplex *channel*: a socketpair carrying length-prefixed pickle frames.  The
  loop side (:class:`Channel`) is wired to the loop with ``add_reader`` /
  ``add_writer`` so sends and receives never block it; the child side
  (:class:`FrameSocket`) is plain blocking code;
* :class:`ProcessHandle`, a started :class:`multiprocessing.Process` watched
  through its sentinel (``add_reader`` on the fd: the loop never blocks and
  nothing calls ``waitpid(-1)``), with SIGTERM-grace-SIGKILL stopping of its
  process group, its leftovers killed when it exits, and ``die_with_parent``
  (the spawn guard watches it; a forkserver child sets PR_SET_PDEATHSIG);
* refusing to start processes while a child imports a main script that has no
  ``if __name__ == "__main__":`` guard (:class:`NoMainGuard`);
* the exit-flush registry (:func:`register_exit_flush`): hooks a child runs
  before it exits, because ``os._exit`` (how multiprocessing ends a child) runs
  none;
* the contextvars carried into other processes (:func:`carry_context_var`,
  structlog's contextvars) and the worker id (:func:`current_worker_id`);
* :class:`ChildProcess`, multiprocessing.Process re-expressed async.

The worker pools (``_pool_processes``) and the supervisor reuse the channel,
the handle and the helpers; they add their own protocol over the frames.

Rejected: asyncio's subprocess API (it runs commands, not callables, and
uvloop's is slow); ``multiprocessing.connection.Connection`` on the loop side
(its reads and writes block); ``loop.connect_accepted_socket`` transports (a
protocol object per frame path and no synchronous drain of what a dead child
left in the socket, which crash handling needs); the ``fork`` start method by
default (it deadlocks when the parent has threads, cpython#100229).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import importlib
import inspect
import io
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import traceback
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar, overload

from .._core._backend import require_asyncio
from .._core._state import (
    WORKER_ID as WORKER_ID,
    register_exit_flush as register_exit_flush,
    run_exit_flush as run_exit_flush,
)
from .._proc._spawn import forget_with_parent, set_parent_death_signal, watch_with_parent
from ..errors import ChildProcessFailed, FrameTooLarge, RemoteError, RuntimeStateError

__all__ = [
    "ChildProcess",
    "current_worker_id",
    "carry_context_var",
    "register_exit_flush",
    "default_context",
]

T = TypeVar("T")
log = logging.getLogger("anycore.child")

_HEADER = struct.Struct("!I")
_HIGHEST = pickle.HIGHEST_PROTOCOL
#: The largest frame either side accepts unless told otherwise.
DEFAULT_MAX_FRAME = 1 << 30


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


# -- serialisation ------------------------------------------------------------

_cloudpickle: Any = None
_cloudpickle_checked = False


def _get_cloudpickle() -> Any:
    global _cloudpickle, _cloudpickle_checked
    if not _cloudpickle_checked:
        try:
            import cloudpickle

            _cloudpickle = cloudpickle
        except ImportError:  # pragma: no cover - cloudpickle is in the test extras
            _cloudpickle = None
        _cloudpickle_checked = True
    return _cloudpickle


_file_keeping_pickler: Any = None


def _cloudpickle_dumps(obj: object) -> bytes:
    """cloudpickle, but code keeps its file name.

    cloudpickle writes every code object it carries by value with the file
    name ``<dynamic-code>``, so a traceback from the child points nowhere.  A
    pickler whose code reducer puts the real name back makes the child's
    frames name the user's file and line (and show the line's source).
    """
    global _file_keeping_pickler
    cp = _get_cloudpickle()
    if _file_keeping_pickler is None:
        original = cp.Pickler.dispatch_table.get(types.CodeType)
        if original is None:  # pragma: no cover - another cloudpickle design
            _file_keeping_pickler = cp.Pickler
        else:

            def reduce_code(code: types.CodeType) -> Any:
                rebuild, args = original(code)
                fixed = tuple(
                    code.co_filename if isinstance(a, str) and a == "<dynamic-code>" else a
                    for a in args
                )
                return rebuild, fixed

            class FileKeepingPickler(cp.Pickler):  # type: ignore[misc, name-defined]
                dispatch_table: ClassVar[Any] = collections.ChainMap(
                    {types.CodeType: reduce_code}, cp.Pickler.dispatch_table
                )

            _file_keeping_pickler = FileKeepingPickler
    buf = io.BytesIO()
    _file_keeping_pickler(buf, protocol=_HIGHEST).dump(obj)
    return buf.getvalue()


def dumps(obj: object) -> bytes:
    """Pickle *obj*; fall back to cloudpickle when pickle cannot carry it."""
    try:
        return pickle.dumps(obj, _HIGHEST)
    except (pickle.PicklingError, AttributeError, TypeError):
        cp = _get_cloudpickle()
        if cp is None:
            raise
        return _cloudpickle_dumps(obj)


def dumps_callable(fn: object) -> bytes:
    """Pickle a callable, by value (cloudpickle) when it cannot go by reference.

    Functions defined in ``__main__``, in another function or as lambdas do
    not exist under that name in the child; cloudpickle, when installed,
    carries their code instead.
    """
    cp = _get_cloudpickle()
    if cp is not None:
        module = getattr(fn, "__module__", None)
        qualname = getattr(fn, "__qualname__", "")
        if module == "__main__" or "<" in qualname:
            return _cloudpickle_dumps(fn)
    return dumps(fn)


def exception_payload(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    """Describe an exception for the other process.

    Returns:
        ``(pickled exception or None, type name, message, formatted traceback)``.
    """
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _drop_machinery_frames(report)
    tb = "".join(report.format())
    try:
        data: bytes | None = dumps(exc)
    except Exception:
        data = None
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable>"
    return data, kind, message[:10_000], tb


_MACHINERY = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(asyncio.__file__))


def _drop_machinery_frames(report: traceback.TracebackException) -> None:
    """Drop the leading frames of anycore's worker loop (and ``asyncio.run``
    around a coroutine target): the traceback starts in the user's code."""
    seen: set[int] = set()
    node: traceback.TracebackException | None = report
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        frames = list(node.stack)
        start = 0
        while start < len(frames) - 1 and frames[start].filename.startswith(_MACHINERY):
            start += 1
        if start:
            node.stack = traceback.StackSummary.from_list(frames[start:])
        node = node.__cause__ or node.__context__


def rebuild_exception(
    payload: tuple[bytes | None, str, str, str], where: str
) -> tuple[BaseException | None, RemoteError]:
    """Turn :func:`exception_payload`'s tuple back into exceptions.

    Returns:
        ``(original exception or None when it could not be rebuilt, RemoteError)``.
    """
    data, kind, message, tb = payload
    original: BaseException | None = None
    if data is not None:
        try:
            loaded = pickle.loads(data)
        except Exception:
            loaded = None
        if isinstance(loaded, BaseException):
            original = loaded
    remote = RemoteError(f"{kind}: {message} (raised in {where})", tb)
    return original, remote


# -- exit flush hooks ---------------------------------------------------------

# The registry lives in the leaf module _state, so that logging reaches it
# without loading this module: register_exit_flush / run_exit_flush are its.


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


# -- context carried across processes -----------------------------------------

# WORKER_ID lives in _state (logging reads it without loading this module).
_CARRIED: dict[str, tuple[str, ContextVar[Any]]] = {}


def current_worker_id() -> str | None:
    """Return the id of the pool worker running this code, or None outside one.

    Pool workers (tasks, threads and processes) set it, for log processors to
    bind as ``worker_id``.
    """
    return WORKER_ID.get()


def carry_context_var(var: ContextVar[T], module: str | None = None) -> ContextVar[T]:
    """Carry *var*'s value into pool processes and child tasks.

    Threads and tasks see every contextvar of their caller.  Processes get a
    snapshot: structlog's contextvars (what ``bind_contextvars`` set) and the
    variables registered here, when their values pickle.  The worker imports
    *module* (default: the caller's module) to find the variable again, so
    register module-level variables only.

    Args:
        var: the variable; its ``name`` must be unique among carried variables.
        module: the module defining it, if not the caller's.

    Returns:
        *var*, so the call can wrap the definition.
    """
    if module is None:
        module = sys._getframe(1).f_globals.get("__name__", "__main__")
    _CARRIED[var.name] = (module, var)
    return var


carry_context_var(WORKER_ID, __name__)

Snapshot = tuple[tuple[str, str, str, Any], ...]


def context_snapshot() -> Snapshot | None:
    """Return the carried contextvars of the current context (None if none)."""
    items: list[tuple[str, str, str, Any]] = []
    for var, value in contextvars.copy_context().items():
        name = var.name
        if name.startswith("structlog_"):
            if value is not Ellipsis:
                items.append(("s", "", name[10:], value))
        elif var is not WORKER_ID:
            entry = _CARRIED.get(name)
            if entry is not None and entry[1] is var:
                items.append(("a", entry[0], name, value))
    return tuple(items) if items else None


def picklable_snapshot(snapshot: Snapshot | None) -> Snapshot | None:
    """Drop the entries of *snapshot* whose values do not pickle."""
    if not snapshot:
        return None
    kept = []
    for item in snapshot:
        try:
            pickle.dumps(item[3], _HIGHEST)
        except Exception:
            log.debug("context variable %s not carried: its value does not pickle", item[2])
            continue
        kept.append(item)
    return tuple(kept) or None


def restore_snapshot(snapshot: Snapshot) -> None:
    """Set the variables of *snapshot* in the current context (child side)."""
    bind: dict[str, Any] = {}
    for kind, module, name, value in snapshot:
        if kind == "s":
            bind[name] = value
        else:
            entry = _CARRIED.get(name)
            if entry is None:
                try:
                    importlib.import_module(module)
                except Exception:
                    continue
                entry = _CARRIED.get(name)
            if entry is not None:
                entry[1].set(value)
    if bind:
        try:
            from structlog.contextvars import bind_contextvars
        except ImportError:  # pragma: no cover - structlog is a dependency
            return
        bind_contextvars(**bind)


# -- framing over a socket ----------------------------------------------------


class FrameSocket:
    """Blocking, child-side end of a channel: length-prefixed frames.

    Args:
        sock: a connected stream socket.
        max_frame_size: frames announced larger than this raise FrameTooLarge.
    """

    def __init__(self, sock: socket.socket, max_frame_size: int = DEFAULT_MAX_FRAME) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._pos = 0
        self.eof = False

    def _take(self) -> bytes | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        (size,) = _HEADER.unpack_from(buf, pos)
        if size > self.max_frame_size:
            raise FrameTooLarge(size, self.max_frame_size)
        end = pos + 4 + size
        if end > len(buf):
            return None
        frame = bytes(buf[pos + 4 : end])
        if end == len(buf):
            buf.clear()
            self._pos = 0
        else:
            self._pos = end
        return frame

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0

    def recv_frame(self) -> bytes | None:
        """Block until a whole frame arrived; None at EOF."""
        while True:
            frame = self._take()
            if frame is not None:
                return frame
            if self.eof:
                return None
            self._compact()
            data = self.sock.recv(262144)
            if not data:
                self.eof = True
                continue
            self._buf += data

    def poll_frames(self) -> list[bytes]:
        """Return the whole frames available now, without blocking."""
        frames: list[bytes] = []
        if not self.eof:
            self._compact()
            while True:
                try:
                    data = self.sock.recv(262144, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                if not data:
                    self.eof = True
                    break
                self._buf += data
        while True:
            frame = self._take()
            if frame is None:
                return frames
            frames.append(frame)

    def send_frame(self, payload: bytes) -> None:
        """Send one frame (blocks while the peer's buffer is full)."""
        if len(payload) > self.max_frame_size:
            raise FrameTooLarge(len(payload), self.max_frame_size)
        if len(payload) < 65536:
            self.sock.sendall(_HEADER.pack(len(payload)) + payload)
        else:
            self.sock.sendall(_HEADER.pack(len(payload)))
            self.sock.sendall(payload)


class Channel:
    """Loop-side end of a channel: frames in through a callback, out unblocking.

    Reads run in an ``add_reader`` callback that hands every complete frame to
    *on_frame* (a memoryview or bytes, valid during the call only if it is a
    memoryview).  Writes are queued and flushed once per loop iteration with
    non-blocking sends, the rest when the socket is writable again.

    Args:
        sock: a connected stream socket (made non-blocking).
        on_frame: called with each received frame.
        on_eof: called once when the peer closed its end or the socket failed.
        max_frame_size: a larger announced frame ends the channel with
            FrameTooLarge passed to *on_eof*.
    """

    def __init__(
        self,
        sock: socket.socket,
        on_frame: Callable[[bytes | memoryview], None],
        on_eof: Callable[[BaseException | None], None],
        max_frame_size: int = DEFAULT_MAX_FRAME,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._on_frame = on_frame
        self._on_eof = on_eof
        self.max_frame_size = max_frame_size
        self._rbuf = bytearray()
        self._out: list[bytes] = []
        self._pending = b""
        self._flush_scheduled = False
        self._writer_added = False
        self.closed = False
        self.eof = False
        self._loop.add_reader(self._fd, self._on_readable)

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued for sending and not yet accepted by the socket."""
        return len(self._pending) + sum(len(b) for b in self._out)

    # reading
    def _on_readable(self) -> bool:
        """One read and its frames; False when nothing more can be read now."""
        try:
            data = self._sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._finish(exc)
            return False
        if not data:
            self._finish(None)
            return False
        self._feed(data)
        return True

    def _feed(self, data: bytes) -> None:
        limit = self.max_frame_size
        on_frame = self._on_frame
        if not self._rbuf:
            # Fast path: frames straight out of the received bytes.
            view = memoryview(data)
            n = len(data)
            pos = 0
            while n - pos >= 4:
                (size,) = _HEADER.unpack_from(data, pos)
                if size > limit:
                    self._finish(FrameTooLarge(size, limit))
                    return
                end = pos + 4 + size
                if end > n:
                    break
                on_frame(view[pos + 4 : end])
                pos = end
                if self.closed:
                    return
            if pos < n:
                self._rbuf += view[pos:]
            return
        buf = self._rbuf
        buf += data
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            if size > limit:
                self._finish(FrameTooLarge(size, limit))
                return
            end = pos + 4 + size
            if end > n:
                break
            frame = bytes(buf[pos + 4 : end])
            pos = end
            on_frame(frame)
            if self.closed:
                return
        del buf[:pos]

    def drain_now(self) -> None:
        """Read and dispatch everything the peer left in the socket, now.

        Used when the peer process is known to have exited: what it wrote
        before dying is in the socket buffer.
        """
        for _ in range(100_000):  # bounded: 25 GiB at 256 KiB per read
            if self.closed or self.eof or not self._on_readable():
                return

    def _finish(self, exc: BaseException | None) -> None:
        if self.eof:
            return
        self.eof = True
        self._loop.remove_reader(self._fd)
        self._on_eof(exc)

    # writing
    def send_frame(self, payload: bytes) -> None:
        """Queue one frame; it leaves at the end of this loop iteration.

        Raises:
            FrameTooLarge: *payload* is larger than ``max_frame_size``.
        """
        if self.closed:
            return
        size = len(payload)
        if size > self.max_frame_size:
            raise FrameTooLarge(size, self.max_frame_size)
        self._out.append(_HEADER.pack(size))
        self._out.append(payload)
        if not self._flush_scheduled and not self._writer_added:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed:
            return
        data = self._pending + b"".join(self._out) if self._pending else b"".join(self._out)
        self._out.clear()
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # The peer is gone; the reader side reports it.
            self._pending = b""
            return
        self._pending = data[sent:]
        if self._pending and not self._writer_added:
            self._writer_added = True
            self._loop.add_writer(self._fd, self._on_writable)
        elif not self._pending and self._writer_added:
            self._writer_added = False
            self._loop.remove_writer(self._fd)

    def _on_writable(self) -> None:
        self._flush()

    def shutdown_write(self) -> None:
        """Send EOF after the queued frames (the peer's recv returns b'')."""
        self._flush()
        if not self._pending:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        """Stop reading and writing and close the socket."""
        if self.closed:
            return
        self.closed = True
        if not self.eof:
            self.eof = True
            self._loop.remove_reader(self._fd)
        if self._writer_added:
            self._loop.remove_writer(self._fd)
            self._writer_added = False
        self._out.clear()
        self._pending = b""
        self._sock.close()


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


# -- runtime integration ------------------------------------------------------


def current_runtime() -> Any:
    """The runtime of the running loop, or None (also while it is not importable)."""
    try:
        mod: Any = importlib.import_module("anycore._core._runtime")
    except ModuleNotFoundError as exc:  # pragma: no cover - until the runtime lands
        if exc.name != "anycore._core._runtime":
            raise
        return None
    return mod.current_runtime()


def runtime_phase(name: str) -> Any:
    """Return ``Phase.<name>`` from the runtime module."""
    mod: Any = importlib.import_module("anycore._core._runtime")
    return getattr(mod.Phase, name)


# -- ChildProcess -------------------------------------------------------------

_OK, _ERR, _EXIT = 0, 1, 2

# stdout, stderr, env, cwd of a ChildProcess: sockets travel to the child the way
# multiprocessing passes them (duplicated by the spawning machinery).
_Setup = tuple[socket.socket | None, socket.socket | None, dict[str, str] | None, str | None]


def _run_awaitable(value: Awaitable[T]) -> T:
    async def main() -> T:
        return await value

    return asyncio.run(main())


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
                value = _run_awaitable(value)
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
        cp = _get_cloudpickle()
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
        if cp is not None and (module == "__main__" or "<" in qualname):
            return _cloudpickle_dumps(triple)
        return dumps(triple)

    def _register_runtime(self) -> None:
        rt = current_runtime() if self._use_runtime else None
        if rt is None:
            return
        handle = self._handle
        assert handle is not None
        self._hooks.append(
            rt.add_shutdown_step(
                runtime_phase("PROCESSES"), f"child process {self.name}", self._runtime_stop
            )
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
                + _describe(code)
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
            else ("started" if self.exitcode is None else _describe(self.exitcode))
        )
        return f"<ChildProcess name={self.name!r} pid={self.pid} {state}>"


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


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
