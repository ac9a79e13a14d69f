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

if TYPE_CHECKING:
    from .errors import *  # noqa: F403 - every error is public, errors.__all__ lists them

# name -> private module that defines it.  Each facility owns one section.
_LAZY: dict[str, str] = {
    # -- runtime, tasks, signals, timers (foundation) --
    "run": "._core._runtime",
    "open_runtime": "._core._runtime",
    "current_runtime": "._core._runtime",
    "Runtime": "._core._runtime",
    "Phase": "._core._runtime",
    "ShutdownReport": "._core._runtime",
    "GracefulExit": "._core._runtime",
    "spawn": "._core._tasks",
    "live_tasks": "._core._tasks",
    "active_count": "._core._tasks",
    "TaskLocal": "._core._tasks",
    "PauseSwitch": "._core._tasks",
    "open_signals": "._core._signals",
    "on_signal": "._core._signals",
    "next_signal": "._core._signals",
    "SignalReceiver": "._core._signals",
    "SignalHandle": "._core._signals",
    "Timer": "._core._timers",
    "every": "._core._timers",
    "Tick": "._core._timers",
    "fail_after": "._core._timers",
    "move_on_after": "._core._timers",
    # -- framing (sans-IO) --
    "Framer": "._net._framing",
    "TerminatorFramer": "._net._framing",
    "UniversalNewlineFramer": "._net._framing",
    "FixedSizeFramer": "._net._framing",
    "LengthPrefixFramer": "._net._framing",
    "NetstringFramer": "._net._framing",
    "RawFramer": "._net._framing",
    "TextCodec": "._net._text",
    "TextLineHandler": "._net._text",
    "AsyncChat": "._net._asynchat",
    "simple_producer": "._net._asynchat",
    # -- protocol handlers, servers, clients, datagrams --
    "Handler": "._net._handler",
    "LineHandler": "._net._handler",
    "LengthPrefixedHandler": "._net._handler",
    "NetstringHandler": "._net._handler",
    "FixedSizeHandler": "._net._handler",
    "RawHandler": "._net._handler",
    "ConnectionStatistics": "._net._handler",
    "current_connection_id": "._net._handler",
    "serve": "._net._server",
    "Server": "._net._server",
    "ServerStatistics": "._net._server",
    "connect": "._net._client",
    "Endpoint": "._net._endpoints",
    "parse_endpoint": "._net._endpoints",
    "run_handler": "._net._anyio_driver",
    "DatagramHandler": "._net._datagram",
    "DatagramServer": "._net._datagram_server",
    "DatagramEndpoint": "._net._datagram_client",
    "DatagramStatistics": "._net._datagram",
    "serve_datagram": "._net._datagram_server",
    "open_datagram_endpoint": "._net._datagram_client",
    # -- subprocesses, pipelines, pty --
    "Process": "._proc._subprocess",
    "ProcessStatus": "._proc._subprocess",
    "CompletedProcess": "._proc._subprocess",
    "open_process": "._proc._subprocess",
    "run_process": "._proc._subprocess",
    "call": "._proc._subprocess",
    "check_call": "._proc._subprocess",
    "check_output": "._proc._subprocess",
    "PIPE": "._proc._subprocess",
    "DEVNULL": "._proc._subprocess",
    "STDOUT": "._proc._subprocess",
    "ProcessReader": "._proc._subprocess",
    "TextProcessReader": "._proc._subprocess",
    "ProcessWriter": "._proc._subprocess",
    "Command": "._proc._pipeline",
    "cmd": "._proc._pipeline",
    "Pipeline": "._proc._pipeline",
    "pipeline": "._proc._pipeline",
    "PtyProcess": "._proc._pty",
    "open_pty": "._proc._pty",
    # -- child processes running Python callables --
    "ChildProcess": "._workers._child",
    "current_worker_id": "._workers._carry",
    "carry_context_var": "._workers._carry",
    "register_exit_flush": "._core._state",
    # -- queues, synchronisation, pools --
    "WorkerPool": "._workers._pools",
    "AsyncResult": "._workers._pool_results",
    "PoolStatistics": "._workers._pools",
    "Queue": "._core._queues",
    "LifoQueue": "._core._queues",
    "PriorityQueue": "._core._queues",
    "QueueStatistics": "._core._queues",
    "SyncQueueView": "._core._queues",
    "Lock": "._core._sync",
    "RLock": "._core._sync",
    "Semaphore": "._core._sync",
    "BoundedSemaphore": "._core._sync",
    "Event": "._core._sync",
    "Condition": "._core._sync",
    "CapacityLimiter": "._core._sync",
    "ThreadSafeCondition": "._core._sync",
    "ThreadSafeEvent": "._core._sync",
    "ThreadSafeLock": "._core._sync",
    "ThreadSafeSemaphore": "._core._sync",
    "ThreadSafeStatistics": "._core._sync",
    "ProcessQueue": "._workers._mpqueue",
    "JoinableProcessQueue": "._workers._mpqueue",
    "ProcessQueueStatistics": "._workers._mpqueue",
    "ChildQueue": "._workers._mpqueue",
    "ProcessLock": "._messaging._psync",
    "ProcessSemaphore": "._messaging._psync",
    "ProcessEvent": "._messaging._psync",
    "SharedValue": "._messaging._sharedmem",
    "SharedArray": "._messaging._sharedmem",
    "RawSharedArray": "._messaging._sharedmem",
    "ShmChannel": "._messaging._sharedmem",
    "ShmChannelStatistics": "._messaging._sharedmem",
    "Actor": "._workers._actor",
    "ActorStatistics": "._workers._actor",
    # -- message passing: pipes, listeners, managers --
    "Pipe": "._messaging._connection",
    "Connection": "._messaging._connection",
    "Listener": "._messaging._connection",
    "Client": "._messaging._connection",
    "wait_connections": "._messaging._connection",
    "Codec": "._messaging._connection",
    "PickleCodec": "._messaging._connection",
    "JsonCodec": "._messaging._connection",
    "MsgpackCodec": "._messaging._connection",
    "BaseManager": "._messaging._managers",
    "SyncManager": "._messaging._managers",
    "AsyncProxy": "._messaging._managers",
    "LockProxy": "._messaging._managers",
    # -- console input and the filesystem --
    "open_console": "._proc._console",
    "Console": "._proc._console",
    "walk": "._proc._fs",
    "iter_files": "._proc._fs",
    # -- supervision --
    "Supervisor": "._supervise._supervisor",
    "Program": "._supervise._supervisor",
    "ProgramState": "._supervise._supervisor",
    "ProgramStatus": "._supervise._supervisor",
    "UnknownProgram": "._supervise._supervisor",
    "Stack": "._supervise._stackfile",
    "load_stack": "._supervise._stackfile",
    # -- command line --
    "add_standard_options": "._cli",
    "apply_standard_options": "._cli",
}

__all__ = ["__version__", *_errors.__all__, *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _errors.__all__:
        # Looked up rather than star-imported: the anyio-derived errors import
        # anyio when first used, and ``import anycore`` should not.
        value = getattr(_errors, name)
    else:
        try:
            module = _LAZY[name]
        except KeyError:
            raise AttributeError(f"module 'anycore' has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_errors.__all__) | set(_LAZY))


if TYPE_CHECKING:
    # -- runtime, tasks, signals, timers (foundation) --
    # -- framing (sans-IO) --
    from ._cli import (
        add_standard_options as add_standard_options,
        apply_standard_options as apply_standard_options,
    )
    from ._core._queues import (
        LifoQueue as LifoQueue,
        PriorityQueue as PriorityQueue,
        Queue as Queue,
        QueueStatistics as QueueStatistics,
        SyncQueueView as SyncQueueView,
    )
    from ._core._runtime import (
        GracefulExit as GracefulExit,
        Phase as Phase,
        Runtime as Runtime,
        ShutdownReport as ShutdownReport,
        current_runtime as current_runtime,
        open_runtime as open_runtime,
        run as run,
    )
    from ._core._signals import (
        SignalHandle as SignalHandle,
        SignalReceiver as SignalReceiver,
        next_signal as next_signal,
        on_signal as on_signal,
        open_signals as open_signals,
    )
    from ._core._state import register_exit_flush as register_exit_flush
    from ._core._sync import (
        BoundedSemaphore as BoundedSemaphore,
        CapacityLimiter as CapacityLimiter,
        Condition as Condition,
        Event as Event,
        Lock as Lock,
        RLock as RLock,
        Semaphore as Semaphore,
        ThreadSafeCondition as ThreadSafeCondition,
        ThreadSafeEvent as ThreadSafeEvent,
        ThreadSafeLock as ThreadSafeLock,
        ThreadSafeSemaphore as ThreadSafeSemaphore,
        ThreadSafeStatistics as ThreadSafeStatistics,
    )
    from ._core._tasks import (
        PauseSwitch as PauseSwitch,
        TaskLocal as TaskLocal,
        active_count as active_count,
        live_tasks as live_tasks,
        spawn as spawn,
    )
    from ._core._timers import (
        Tick as Tick,
        Timer as Timer,
        every as every,
        fail_after as fail_after,
        move_on_after as move_on_after,
    )

    # -- message passing: pipes, listeners, managers --
    from ._messaging._connection import (
        Client as Client,
        Codec as Codec,
        Connection as Connection,
        JsonCodec as JsonCodec,
        Listener as Listener,
        MsgpackCodec as MsgpackCodec,
        PickleCodec as PickleCodec,
        Pipe as Pipe,
        wait_connections as wait_connections,
    )
    from ._messaging._managers import (
        AsyncProxy as AsyncProxy,
        BaseManager as BaseManager,
        LockProxy as LockProxy,
        SyncManager as SyncManager,
    )
    from ._messaging._psync import (
        ProcessEvent as ProcessEvent,
        ProcessLock as ProcessLock,
        ProcessSemaphore as ProcessSemaphore,
    )
    from ._messaging._sharedmem import (
        RawSharedArray as RawSharedArray,
        SharedArray as SharedArray,
        SharedValue as SharedValue,
        ShmChannel as ShmChannel,
        ShmChannelStatistics as ShmChannelStatistics,
    )
    from ._net._anyio_driver import run_handler as run_handler
    from ._net._asynchat import AsyncChat as AsyncChat, simple_producer as simple_producer

    # -- protocol handlers, servers, clients, datagrams --
    from ._net._client import connect as connect
    from ._net._datagram import (
        DatagramHandler as DatagramHandler,
        DatagramStatistics as DatagramStatistics,
    )
    from ._net._datagram_client import (
        DatagramEndpoint as DatagramEndpoint,
        open_datagram_endpoint as open_datagram_endpoint,
    )
    from ._net._datagram_server import (
        DatagramServer as DatagramServer,
        serve_datagram as serve_datagram,
    )
    from ._net._endpoints import Endpoint as Endpoint, parse_endpoint as parse_endpoint
    from ._net._framing import (
        FixedSizeFramer as FixedSizeFramer,
        Framer as Framer,
        LengthPrefixFramer as LengthPrefixFramer,
        NetstringFramer as NetstringFramer,
        RawFramer as RawFramer,
        TerminatorFramer as TerminatorFramer,
        UniversalNewlineFramer as UniversalNewlineFramer,
    )
    from ._net._handler import (
        ConnectionStatistics as ConnectionStatistics,
        FixedSizeHandler as FixedSizeHandler,
        Handler as Handler,
        LengthPrefixedHandler as LengthPrefixedHandler,
        LineHandler as LineHandler,
        NetstringHandler as NetstringHandler,
        RawHandler as RawHandler,
        current_connection_id as current_connection_id,
    )
    from ._net._server import Server as Server, ServerStatistics as ServerStatistics, serve as serve
    from ._net._text import TextCodec as TextCodec, TextLineHandler as TextLineHandler

    # -- console input and the filesystem --
    from ._proc._console import Console as Console, open_console as open_console
    from ._proc._fs import iter_files as iter_files, walk as walk

    # -- subprocesses, pipelines, pty --
    from ._proc._pipeline import (
        Command as Command,
        Pipeline as Pipeline,
        cmd as cmd,
        pipeline as pipeline,
    )
    from ._proc._pty import PtyProcess as PtyProcess, open_pty as open_pty
    from ._proc._subprocess import (
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

    # -- supervision --
    from ._supervise._stackfile import Stack as Stack, load_stack as load_stack
    from ._supervise._supervisor import (
        Program as Program,
        ProgramState as ProgramState,
        ProgramStatus as ProgramStatus,
        Supervisor as Supervisor,
        UnknownProgram as UnknownProgram,
    )
    from ._workers._actor import Actor as Actor, ActorStatistics as ActorStatistics

    # -- child processes running Python callables --
    from ._workers._carry import (
        carry_context_var as carry_context_var,
        current_worker_id as current_worker_id,
    )
    from ._workers._child import ChildProcess as ChildProcess
    from ._workers._mpqueue import (
        ChildQueue as ChildQueue,
        JoinableProcessQueue as JoinableProcessQueue,
        ProcessQueue as ProcessQueue,
        ProcessQueueStatistics as ProcessQueueStatistics,
    )

    # -- queues, synchronisation, pools --
    from ._workers._pool_results import AsyncResult as AsyncResult
    from ._workers._pools import PoolStatistics as PoolStatistics, WorkerPool as WorkerPool
