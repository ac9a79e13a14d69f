"""anycore: an asyncio framework for networking and process orchestration.

The public API is flat: ``from anycore import serve, Process, Queue, run``.
Names are resolved lazily (PEP 562), so ``import anycore`` costs little and a
program pays only for the facilities it touches.  Public submodules:
``anycore.errors``, ``anycore.logging`` and ``anycore.testing``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors as _errors
from ._version import __version__ as __version__
from .errors import (
    AnycoreError as AnycoreError,
    BrokenError as BrokenError,
    BusyError as BusyError,
    CalledProcessError as CalledProcessError,
    ChildProcessFailed as ChildProcessFailed,
    ClosedError as ClosedError,
    ConnectError as ConnectError,
    ConnectionLimitReached as ConnectionLimitReached,
    EndpointError as EndpointError,
    ExecutableNotFound as ExecutableNotFound,
    FrameTooLarge as FrameTooLarge,
    IncompleteFrame as IncompleteFrame,
    LocalProtocolError as LocalProtocolError,
    LoopUnavailable as LoopUnavailable,
    OutputLimitExceeded as OutputLimitExceeded,
    PoolClosed as PoolClosed,
    ProcessError as ProcessError,
    ProtocolError as ProtocolError,
    QueueClosed as QueueClosed,
    QueueEmpty as QueueEmpty,
    QueueFull as QueueFull,
    RemoteError as RemoteError,
    RemoteProtocolError as RemoteProtocolError,
    RuntimeStateError as RuntimeStateError,
    ShutdownTimeout as ShutdownTimeout,
    SignalError as SignalError,
    TimeoutExpired as TimeoutExpired,
    WorkerCrashed as WorkerCrashed,
)

# name -> private module that defines it.  Each facility owns one section.
_LAZY: dict[str, str] = {
    # -- runtime, tasks, signals, timers (foundation) --
    "run": "._runtime",
    "open_runtime": "._runtime",
    "current_runtime": "._runtime",
    "Runtime": "._runtime",
    "Phase": "._runtime",
    "ShutdownReport": "._runtime",
    "GracefulExit": "._runtime",
    "spawn": "._tasks",
    "live_tasks": "._tasks",
    "active_count": "._tasks",
    "TaskLocal": "._tasks",
    "open_signals": "._signals",
    "on_signal": "._signals",
    "next_signal": "._signals",
    "SignalReceiver": "._signals",
    "SignalHandle": "._signals",
    "Timer": "._timers",
    "every": "._timers",
    "Tick": "._timers",
    "fail_after": "._timers",
    "move_on_after": "._timers",
    # -- framing (sans-IO) --
    # -- protocol handlers, servers, clients, datagrams --
    "DatagramHandler": "._datagram",
    "DatagramServer": "._datagram",
    "DatagramEndpoint": "._datagram",
    "DatagramStatistics": "._datagram",
    "serve_datagram": "._datagram",
    "open_datagram_endpoint": "._datagram",
    # -- subprocesses, pipelines, pty --
    "Process": "._subprocess",
    "ProcessStatus": "._subprocess",
    "CompletedProcess": "._subprocess",
    "open_process": "._subprocess",
    "run_process": "._subprocess",
    "call": "._subprocess",
    "check_call": "._subprocess",
    "check_output": "._subprocess",
    "PIPE": "._subprocess",
    "DEVNULL": "._subprocess",
    "STDOUT": "._subprocess",
    "ProcessReader": "._subprocess",
    "TextProcessReader": "._subprocess",
    "ProcessWriter": "._subprocess",
    "Command": "._pipeline",
    "cmd": "._pipeline",
    "Pipeline": "._pipeline",
    "pipeline": "._pipeline",
    "PtyProcess": "._pty",
    "open_pty": "._pty",
    # -- child processes running Python callables --
    "ChildProcess": "._child",
    "current_worker_id": "._child",
    "carry_context_var": "._child",
    "register_exit_flush": "._child",
    # -- queues, synchronisation, pools --
    "WorkerPool": "._pools",
    "AsyncResult": "._pools",
    "PoolStatistics": "._pools",
}

__all__ = ["__version__", *_errors.__all__, *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'anycore' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    # -- runtime, tasks, signals, timers (foundation) --
    from ._runtime import (
        GracefulExit as GracefulExit,
        Phase as Phase,
        Runtime as Runtime,
        ShutdownReport as ShutdownReport,
        current_runtime as current_runtime,
        open_runtime as open_runtime,
        run as run,
    )
    from ._signals import (
        SignalHandle as SignalHandle,
        SignalReceiver as SignalReceiver,
        next_signal as next_signal,
        on_signal as on_signal,
        open_signals as open_signals,
    )
    from ._tasks import (
        TaskLocal as TaskLocal,
        active_count as active_count,
        live_tasks as live_tasks,
        spawn as spawn,
    )
    from ._timers import (
        Tick as Tick,
        Timer as Timer,
        every as every,
        fail_after as fail_after,
        move_on_after as move_on_after,
    )
    # -- framing (sans-IO) --
    # -- protocol handlers, servers, clients, datagrams --
    from ._datagram import (
        DatagramEndpoint as DatagramEndpoint,
        DatagramHandler as DatagramHandler,
        DatagramServer as DatagramServer,
        DatagramStatistics as DatagramStatistics,
        open_datagram_endpoint as open_datagram_endpoint,
        serve_datagram as serve_datagram,
    )
    # -- subprocesses, pipelines, pty --
    from ._pipeline import (
        Command as Command,
        Pipeline as Pipeline,
        cmd as cmd,
        pipeline as pipeline,
    )
    from ._pty import PtyProcess as PtyProcess, open_pty as open_pty
    from ._subprocess import (
        DEVNULL as DEVNULL,
        PIPE as PIPE,
        STDOUT as STDOUT,
        CompletedProcess as CompletedProcess,
        Process as Process,
        ProcessReader as ProcessReader,
        ProcessStatus as ProcessStatus,
        ProcessWriter as ProcessWriter,
        TextProcessReader as TextProcessReader,
        call as call,
        check_call as check_call,
        check_output as check_output,
        open_process as open_process,
        run_process as run_process,
    )
    # -- child processes running Python callables --
    from ._child import (
        ChildProcess as ChildProcess,
        carry_context_var as carry_context_var,
        current_worker_id as current_worker_id,
        register_exit_flush as register_exit_flush,
    )
    # -- queues, synchronisation, pools --
    from ._pools import (
        AsyncResult as AsyncResult,
        PoolStatistics as PoolStatistics,
        WorkerPool as WorkerPool,
    )
