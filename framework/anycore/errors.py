"""anycore's error hierarchy.

Every error anycore raises on purpose derives from :class:`AnycoreError`.
Where anyio already names the state a resource is in (closed, broken, busy),
anycore's error derives from anyio's class too, so code written against anyio
catches anycore's errors unchanged::

    try:
        await queue.put(item)
    except anyio.ClosedResourceError:   # or anycore.QueueClosed
        ...

Protocol violations follow h11's split: a :class:`LocalProtocolError` is our
own side misbehaving (a frame too large to send), a :class:`RemoteProtocolError`
is the peer's fault (a frame too large received, malformed input).  Both are
:class:`ProtocolError`.

This module is public (``anycore.errors``); every name is also exported from
``anycore`` itself.

Importing it loads no anyio (the sans-IO framers raise these errors and must
load nothing async).  The classes that derive from anyio's are defined with
stand-in bases and kept out of the module's namespace; the first time one of
them is looked up (``anycore.errors.ClosedError``, ``from anycore.errors
import QueueFull``, unpickling), anyio is imported, each stand-in base is
replaced by anyio's real class (``__bases__``), and they are published (PEP
562).  Each class is created once, so its identity never changes, and nobody
outside this module can see one before it has its anyio base.
"""

from __future__ import annotations

import errno
import queue
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anyio as _anyio
else:

    class _anyio:
        """Stand-ins for anyio's base classes until anyio is imported (see above)."""

        class ClosedResourceError(Exception):
            pass

        class BrokenResourceError(Exception):
            pass

        class BusyResourceError(Exception):
            pass

        class EndOfStream(Exception):
            pass

        class WouldBlock(Exception):
            pass


__all__ = [
    "AnycoreError",
    "ClosedError",
    "BrokenError",
    "BusyError",
    "WouldBlock",
    "LoopUnavailable",
    "BackendNotSupported",
    "RuntimeStateError",
    "SignalError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "FrameTooLarge",
    "IncompleteFrame",
    "EndpointError",
    "ConnectError",
    "HandlerError",
    "ProcessError",
    "ExecutableNotFound",
    "NotExecutable",
    "CalledProcessError",
    "TimeoutExpired",
    "OutputLimitExceeded",
    "ChildProcessFailed",
    "DaskWorkerLost",
    "RemoteError",
    "QueueClosed",
    "QueueEmpty",
    "QueueFull",
    "TooManyReleases",
    "WorkerCrashed",
    "PoolMessageTooLarge",
    "PoolClosed",
    "StackFileError",
    "LoggingConfigError",
    "AuthenticationError",
    "PeerClosed",
    "BufferTooShort",
    "UndecodableMessage",
    "InsecureListener",
    "MethodNotExposed",
    "ManagerError",
    "ControlSocketError",
    "MessageTooLarge",
]


class AnycoreError(Exception):
    """Base class of every error anycore raises on purpose."""


# -- resource states (anyio names them; anycore's errors are anyio's too) ----


class ClosedError(AnycoreError, _anyio.ClosedResourceError):
    """The resource was closed by this side and can no longer be used."""


class BrokenError(AnycoreError, _anyio.BrokenResourceError):
    """The resource broke (the peer reset, the process died) and is unusable."""


class BusyError(AnycoreError, _anyio.BusyResourceError):
    """Another task is already doing this with the resource."""

    def __init__(self, action: str = "use") -> None:
        AnycoreError.__init__(self, f"another task is already {action}ing this resource")
        self.action = action


class WouldBlock(AnycoreError, _anyio.WouldBlock):
    """A ``*_nowait`` call could not proceed without waiting.

    Every ``*_nowait`` method raises it (or a subclass: :class:`QueueEmpty`,
    :class:`QueueFull`) instead of returning a flag, as trio and anyio do;
    also anyio's ``WouldBlock``.
    """


# -- runtime ------------------------------------------------------------------


class LoopUnavailable(AnycoreError):
    """The requested event loop implementation cannot be used here."""


class BackendNotSupported(LoopUnavailable):
    """The primitive needs asyncio (or uvloop) and the caller runs on another
    async library (trio); the message says what to use there instead."""


class RuntimeStateError(AnycoreError, RuntimeError):
    """An operation does not fit the runtime's state (no loop, shut down, ...)."""


class SignalError(AnycoreError, RuntimeError):
    """A signal handler cannot be installed the way it was asked for."""


# -- protocols and framing ----------------------------------------------------


class ProtocolError(AnycoreError):
    """The byte stream does not follow the protocol."""


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class FrameTooLarge(RemoteProtocolError):
    """A frame grew past the framer's ``max_frame_size``.

    Attributes:
        size: how many bytes the frame had reached (or announced) when refused.
        limit: the limit in force.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class IncompleteFrame(RemoteProtocolError):
    """The stream ended in the middle of a frame.

    Attributes:
        data: the bytes of the unfinished frame.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(f"stream ended inside a frame ({len(data)} bytes pending)")
        self.data = data


class EndpointError(AnycoreError, ValueError):
    """An endpoint string or its options cannot be understood."""


class ConnectError(AnycoreError, OSError):
    """Connecting failed (after every address and retry was tried)."""


class HandlerError(AnycoreError, TypeError):
    """A handler class, factory or call cannot work (checked before serving).

    ``serve()`` and ``connect()`` raise it for a factory that is not a Handler
    subclass or returns something else, an instance passed instead of a class,
    or a misconfigured class attribute (a ``str`` delimiter); ``send_line`` for
    a ``str`` line.  Also a :class:`TypeError`.
    """


# -- processes ----------------------------------------------------------------


class ProcessError(AnycoreError):
    """Base class of errors about child processes."""


class ExecutableNotFound(ProcessError, FileNotFoundError):
    """The program to start does not exist or is not executable."""

    def __init__(self, executable: str, hint: str = "") -> None:
        message = f"executable not found: {executable!r}" + (f" ({hint})" if hint else "")
        ProcessError.__init__(self, message)
        self.executable = executable
        self.filename = executable

    def __str__(self) -> str:
        # OSError.__str__ would print "[Errno None] None: 'name'" once filename is set.
        return str(self.args[0])


class NotExecutable(ProcessError, PermissionError):
    """The program exists but cannot be executed (no execute permission, or
    not a program this system can run); also a :class:`PermissionError`."""

    def __init__(self, executable: str, reason: str = "", code: int = errno.EACCES) -> None:
        ProcessError.__init__(
            self, f"not executable: {executable!r}" + (f" ({reason})" if reason else "")
        )
        self.executable = executable
        self.filename = executable
        self.errno = code

    def __str__(self) -> str:
        return str(self.args[0])


class CalledProcessError(ProcessError):
    """A process checked with ``check=True`` exited unsuccessfully.

    Mirrors :class:`subprocess.CalledProcessError`.
    """

    def __init__(
        self,
        returncode: int,
        cmd: object,
        output: bytes | str | None = None,
        stderr: bytes | str | None = None,
    ) -> None:
        super().__init__(returncode, cmd, output, stderr)
        self.returncode = returncode
        self.cmd = cmd
        self.output = output
        self.stderr = stderr

    @property
    def stdout(self) -> bytes | str | None:
        """Alias of :attr:`output`, as in :mod:`subprocess`."""
        return self.output

    def __str__(self) -> str:
        if self.returncode < 0:
            return f"Command {self.cmd!r} died with {signal_name(-self.returncode)}."
        return f"Command {self.cmd!r} returned non-zero exit status {self.returncode}."


class TimeoutExpired(ProcessError, TimeoutError):
    """A process did not finish within its timeout.

    Mirrors :class:`subprocess.TimeoutExpired`, and is a :class:`TimeoutError`.
    """

    def __init__(
        self,
        cmd: object,
        timeout: float,
        output: bytes | str | None = None,
        stderr: bytes | str | None = None,
    ) -> None:
        super().__init__(cmd, timeout, output, stderr)
        self.cmd = cmd
        self.timeout = timeout
        self.output = output
        self.stderr = stderr

    @property
    def stdout(self) -> bytes | str | None:
        """Alias of :attr:`output`, as in :mod:`subprocess`."""
        return self.output

    def __str__(self) -> str:
        return f"Command {self.cmd!r} timed out after {self.timeout} seconds"


class OutputLimitExceeded(ProcessError):
    """Captured output grew past its limit."""

    def __init__(self, stream: str, limit: int) -> None:
        super().__init__(f"captured {stream} exceeds the limit of {limit} bytes")
        self.stream = stream
        self.limit = limit


class ChildProcessFailed(ProcessError):
    """A Python callable run in a child process failed to start or report."""


class DaskWorkerLost(ChildProcessFailed):
    """A task of a ``WorkerPool("dask")`` was running on Dask workers that died.

    Dask's scheduler re-runs a task whose worker died on another worker; once
    workers have died under it more than ``allowed_failures`` times (Dask's
    ``distributed.scheduler.allowed-failures``, default 3) the task fails with
    this error.  Dask's ``KilledWorker`` is its ``__cause__``.
    """


class RemoteError(AnycoreError):
    """An exception raised in a worker (thread or process), re-raised here.

    The original exception is chained as ``__cause__`` when it could be
    transferred; ``remote_traceback`` always holds the formatted traceback
    from the worker.
    """

    def __init__(self, message: str, remote_traceback: str) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.args[0]}\n\nRemote traceback:\n{self.remote_traceback}"


# -- queues and pools ---------------------------------------------------------


class QueueClosed(ClosedError):
    """The queue was closed: no more puts, and gets once it is empty."""


class QueueEmpty(WouldBlock, queue.Empty):
    """``get_nowait`` found nothing to get; a :class:`WouldBlock` and a :class:`queue.Empty`."""


class QueueFull(WouldBlock, queue.Full):
    """``put_nowait`` found no room; a :class:`WouldBlock` and a :class:`queue.Full`."""


class TooManyReleases(AnycoreError, ValueError):
    """Released more often than acquired.

    A :class:`anycore.BoundedSemaphore` released past its initial value, or
    ``task_done()`` called more times than items were put.  A
    :class:`ValueError`, as :mod:`threading` and :mod:`queue` raise there.
    """


class PoolMessageTooLarge(FrameTooLarge):
    """A pool task's arguments or result pickle larger than ``max_message_size``.

    Refused before anything is sent (the worker stays alive and the pool goes
    on); a :class:`FrameTooLarge` too.

    Attributes:
        size: the pickled size in bytes.
        limit: the pool's ``max_message_size``.
        what: ``"arguments"`` or ``"result"``.
    """

    def __init__(self, size: int, limit: int, what: str = "result") -> None:
        super().__init__(size, limit)
        self.what = what
        self.args = (
            f"the task's {what} pickle to {size} bytes, over the pool's "
            f"max_message_size of {limit} bytes (send less, a path to a file say, "
            "or raise max_message_size)",
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.size, self.limit, self.what))


class WorkerCrashed(BrokenError):
    """A worker process died while running a task.

    Attributes:
        pid: the worker's process id.
        exitcode: its exit status as :attr:`multiprocessing.Process.exitcode`
            reports it (negative: killed by that signal).
    """

    def __init__(self, pid: int | None, exitcode: int | None) -> None:
        how = "unknown status" if exitcode is None else describe_returncode(exitcode)
        super().__init__(f"worker process {pid} died ({how})")
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.pid, self.exitcode))


class PoolClosed(ClosedError):
    """Work was submitted to a pool that is closed or terminated."""


class StackFileError(AnycoreError, ValueError):
    """A stack file (Procfile or TOML) cannot be understood.

    Attributes:
        path: the file.
        line: the 1-based line number of the problem, or ``None``.
        reason: what is wrong.
    """

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class LoggingConfigError(AnycoreError, ValueError):
    """A logging configuration (TOML, dict or ini) cannot be used; the
    message names the file and what is wrong."""


class ControlSocketError(AnycoreError, PermissionError):
    """A supervisor's control socket (or its directory) is not safely ours.

    Raised when the directory or socket file is owned by another user, is
    reachable by other users, or is answered by a process of another user.
    """


# -- message passing ------------------------------------------------------------


class AuthenticationError(AnycoreError):
    """A peer failed the HMAC challenge-response (or broke off the handshake).

    Raised on both sides of a wrong authkey.  Nothing the peer sent was
    decoded.  Not a subclass of :class:`multiprocessing.AuthenticationError`
    (that would import :mod:`multiprocessing` with ``anycore``); catch both
    where code handles either.
    """


class PeerClosed(AnycoreError, _anyio.EndOfStream, EOFError):
    """The peer closed the connection: no more messages will come.

    An :class:`EOFError`, as multiprocessing raises there, and anyio's
    ``EndOfStream``.
    """


class BufferTooShort(AnycoreError):
    """``recv_bytes_into`` got a message larger than the buffer.

    The whole message is ``args[0]``, as with
    :class:`multiprocessing.BufferTooShort`.
    """


class UndecodableMessage(RemoteProtocolError):
    """A message's body could not be decoded by the connection's codec."""


class InsecureListener(AnycoreError, ValueError):
    """A Listener would accept unauthenticated peers from beyond this host."""


class MessageTooLarge(AnycoreError, ValueError):
    """A shared-memory message does not fit: larger than the channel's slots
    (refused before anything waits or is copied), or than the buffer given to
    ``recv_into`` (the message stays in the channel).  Also a :class:`ValueError`.

    Attributes:
        size: the message's size in bytes.
        limit: the room there is.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes does not fit in {limit} bytes")
        self.size = size
        self.limit = limit


class MethodNotExposed(AnycoreError, AttributeError):
    """A manager proxy was asked for a method its shared object does not expose."""


class ManagerError(AnycoreError):
    """A manager server refused a request (unknown type id, unknown object)."""


# -- how a process ended, in words (every process facility says it the same way) --


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15; ``"signal 99"`` for a number no signal is named for."""
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_returncode(returncode: int) -> str:
    """``"exited with code 3"`` or ``"killed by SIGTERM"``, from a returncode in
    :class:`subprocess.Popen`'s convention (``-N``: killed by signal N)."""
    if returncode < 0:
        return f"killed by {signal_name(-returncode)}"
    return f"exited with code {returncode}"


# -- the anyio-derived classes, published on first use (see the module's note) --

if not TYPE_CHECKING:
    _STAND_INS = {cls: name for name, cls in vars(_anyio).items() if isinstance(cls, type)}
    _PENDING: dict[str, type] = {
        name: obj
        for name, obj in list(globals().items())
        if isinstance(obj, type) and any(base in _STAND_INS for base in obj.__mro__)
    }
    for _name in _PENDING:
        del globals()[_name]
    del _name, _anyio

    def _bind_anyio() -> None:
        import anyio

        for cls in _PENDING.values():
            if any(base in _STAND_INS for base in cls.__bases__):
                cls.__bases__ = tuple(
                    getattr(anyio, _STAND_INS[base]) if base in _STAND_INS else base
                    for base in cls.__bases__
                )
        # Published only once every base is anyio's (subclasses follow their bases).
        globals().update(_PENDING)

    def __getattr__(name: str) -> Any:
        if name in _PENDING:
            _bind_anyio()
            return _PENDING[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(_PENDING))
