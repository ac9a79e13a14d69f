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
from .errors import *  # noqa: F403 - every error is public, errors.__all__ lists them

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
    "PauseSwitch": "._tasks",
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
    "Framer": "._framing",
    "TerminatorFramer": "._framing",
    "UniversalNewlineFramer": "._framing",
    "FixedSizeFramer": "._framing",
    "LengthPrefixFramer": "._framing",
    "NetstringFramer": "._framing",
    "RawFramer": "._framing",
    "TextCodec": "._text",
    "TextLineHandler": "._text",
    "AsyncChat": "._asynchat",
    "simple_producer": "._asynchat",
    # -- protocol handlers, servers, clients, datagrams --
    "Handler": "._handler",
    "LineHandler": "._handler",
    "LengthPrefixedHandler": "._handler",
    "NetstringHandler": "._handler",
    "FixedSizeHandler": "._handler",
    "RawHandler": "._handler",
    "ConnectionStatistics": "._handler",
    "current_connection_id": "._handler",
    "serve": "._server",
    "Server": "._server",
    "ServerStatistics": "._server",
    "connect": "._client",
    "Endpoint": "._endpoints",
    "parse_endpoint": "._endpoints",
    "run_handler": "._portable",
    "DatagramHandler": "._datagram",
    "DatagramServer": "._datagram_server",
    "DatagramEndpoint": "._datagram_client",
    "DatagramStatistics": "._datagram",
    "serve_datagram": "._datagram_server",
    "open_datagram_endpoint": "._datagram_client",
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
    "Queue": "._queues",
    "LifoQueue": "._queues",
    "PriorityQueue": "._queues",
    "QueueStatistics": "._queues",
    "SyncQueueView": "._queues",
    "Lock": "._sync",
    "RLock": "._sync",
    "Semaphore": "._sync",
    "BoundedSemaphore": "._sync",
    "Event": "._sync",
    "Condition": "._sync",
    "CapacityLimiter": "._sync",
    "ThreadSafeCondition": "._sync",
    "ThreadSafeEvent": "._sync",
    "ThreadSafeLock": "._sync",
    "ThreadSafeSemaphore": "._sync",
    "ThreadSafeStatistics": "._sync",
    "ProcessQueue": "._mpqueue",
    "JoinableProcessQueue": "._mpqueue",
    "ChildQueue": "._mpqueue",
    "ProcessLock": "._psync",
    "ProcessSemaphore": "._psync",
    "ProcessEvent": "._psync",
    "SharedValue": "._sharedmem",
    "SharedArray": "._sharedmem",
    "RawSharedArray": "._sharedmem",
    "ShmChannel": "._sharedmem",
    "ShmChannelStatistics": "._sharedmem",
    "Actor": "._actor",
    "ActorStatistics": "._actor",
    # -- message passing: pipes, listeners, managers --
    "Pipe": "._connection",
    "Connection": "._connection",
    "Listener": "._connection",
    "Client": "._connection",
    "wait_connections": "._connection",
    "Codec": "._connection",
    "PickleCodec": "._connection",
    "JsonCodec": "._connection",
    "MsgpackCodec": "._connection",
    "BaseManager": "._managers",
    "SyncManager": "._managers",
    "AsyncProxy": "._managers",
    "LockProxy": "._managers",
    # -- console input and the filesystem --
    "open_console": "._console",
    "Console": "._console",
    "walk": "._fs",
    "iter_files": "._fs",
    # -- supervision --
    "Supervisor": "._supervisor",
    "Program": "._supervisor",
    "ProgramState": "._supervisor",
    "ProgramStatus": "._supervisor",
    "UnknownProgram": "._supervisor",
    "Stack": "._stackfile",
    "load_stack": "._stackfile",
    # -- command line --
    "add_standard_options": "._cli",
    "apply_standard_options": "._cli",
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
    # -- framing (sans-IO) --
    from ._actor import Actor as Actor, ActorStatistics as ActorStatistics
    from ._asynchat import AsyncChat as AsyncChat, simple_producer as simple_producer

    # -- child processes running Python callables --
    from ._child import (
        ChildProcess as ChildProcess,
        carry_context_var as carry_context_var,
        current_worker_id as current_worker_id,
        register_exit_flush as register_exit_flush,
    )
    from ._cli import (
        add_standard_options as add_standard_options,
        apply_standard_options as apply_standard_options,
    )

    # -- protocol handlers, servers, clients, datagrams --
    from ._client import connect as connect

    # -- message passing: pipes, listeners, managers --
    from ._connection import (
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

    # -- console input and the filesystem --
    from ._console import Console as Console, open_console as open_console
    from ._datagram import (
        DatagramHandler as DatagramHandler,
        DatagramStatistics as DatagramStatistics,
    )
    from ._datagram_client import (
        DatagramEndpoint as DatagramEndpoint,
        open_datagram_endpoint as open_datagram_endpoint,
    )
    from ._datagram_server import (
        DatagramServer as DatagramServer,
        serve_datagram as serve_datagram,
    )
    from ._endpoints import Endpoint as Endpoint, parse_endpoint as parse_endpoint
    from ._framing import (
        FixedSizeFramer as FixedSizeFramer,
        Framer as Framer,
        LengthPrefixFramer as LengthPrefixFramer,
        NetstringFramer as NetstringFramer,
        RawFramer as RawFramer,
        TerminatorFramer as TerminatorFramer,
        UniversalNewlineFramer as UniversalNewlineFramer,
    )
    from ._fs import iter_files as iter_files, walk as walk
    from ._handler import (
        ConnectionStatistics as ConnectionStatistics,
        FixedSizeHandler as FixedSizeHandler,
        Handler as Handler,
        LengthPrefixedHandler as LengthPrefixedHandler,
        LineHandler as LineHandler,
        NetstringHandler as NetstringHandler,
        RawHandler as RawHandler,
        current_connection_id as current_connection_id,
    )
    from ._managers import (
        AsyncProxy as AsyncProxy,
        BaseManager as BaseManager,
        LockProxy as LockProxy,
        SyncManager as SyncManager,
    )
    from ._mpqueue import (
        ChildQueue as ChildQueue,
        JoinableProcessQueue as JoinableProcessQueue,
        ProcessQueue as ProcessQueue,
    )

    # -- subprocesses, pipelines, pty --
    from ._pipeline import (
        Command as Command,
        Pipeline as Pipeline,
        cmd as cmd,
        pipeline as pipeline,
    )

    # -- queues, synchronisation, pools --
    from ._pools import (
        AsyncResult as AsyncResult,
        PoolStatistics as PoolStatistics,
        WorkerPool as WorkerPool,
    )
    from ._portable import run_handler as run_handler
    from ._psync import (
        ProcessEvent as ProcessEvent,
        ProcessLock as ProcessLock,
        ProcessSemaphore as ProcessSemaphore,
    )
    from ._pty import PtyProcess as PtyProcess, open_pty as open_pty
    from ._queues import (
        LifoQueue as LifoQueue,
        PriorityQueue as PriorityQueue,
        Queue as Queue,
        QueueStatistics as QueueStatistics,
        SyncQueueView as SyncQueueView,
    )
    from ._runtime import (
        GracefulExit as GracefulExit,
        Phase as Phase,
        Runtime as Runtime,
        ShutdownReport as ShutdownReport,
        current_runtime as current_runtime,
        open_runtime as open_runtime,
        run as run,
    )
    from ._server import Server as Server, ServerStatistics as ServerStatistics, serve as serve
    from ._sharedmem import (
        RawSharedArray as RawSharedArray,
        SharedArray as SharedArray,
        SharedValue as SharedValue,
        ShmChannel as ShmChannel,
        ShmChannelStatistics as ShmChannelStatistics,
    )
    from ._signals import (
        SignalHandle as SignalHandle,
        SignalReceiver as SignalReceiver,
        next_signal as next_signal,
        on_signal as on_signal,
        open_signals as open_signals,
    )

    # -- supervision --
    from ._stackfile import Stack as Stack, load_stack as load_stack
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
    from ._supervisor import (
        Program as Program,
        ProgramState as ProgramState,
        ProgramStatus as ProgramStatus,
        Supervisor as Supervisor,
        UnknownProgram as UnknownProgram,
    )
    from ._sync import (
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
    from ._tasks import (
        PauseSwitch as PauseSwitch,
        TaskLocal as TaskLocal,
        active_count as active_count,
        live_tasks as live_tasks,
        spawn as spawn,
    )
    from ._text import TextCodec as TextCodec, TextLineHandler as TextLineHandler
    from ._timers import (
        Tick as Tick,
        Timer as Timer,
        every as every,
        fail_after as fail_after,
        move_on_after as move_on_after,
    )
