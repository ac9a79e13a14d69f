"""anycore.logging: logging that never blocks the loop.

Public submodule, imported on demand (``import anycore`` does not import it).
Names resolve lazily, so ``from anycore.logging import bind_context`` in a
core module does not import structlog; only :func:`configure` and the
structlog helpers do.

* Non-blocking stdlib handlers (a writer thread per sink): :class:`FileHandler`,
  :class:`RotatingFileHandler`, :class:`TimedRotatingFileHandler`,
  :class:`WatchedFileHandler`, :class:`StreamHandler`.
* Loop-native network handlers: :class:`SocketHandler`,
  :class:`DatagramHandler`, :class:`SysLogHandler`, :class:`HTTPHandler`;
  plus :class:`SMTPHandler` and :class:`MemoryHandler`.
* Structured logging: :func:`configure`, :func:`bind_context`,
  :func:`get_logger`.
* Configuration files: :func:`dict_config`, :func:`file_config`,
  :func:`toml_config`.
* Child processes: :func:`child_logging_config`,
  :func:`install_child_forwarding`.
* :func:`monitor_loop_lag`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    # context (no structlog)
    "bind_context": "._context",
    "current_context": "._context",
    "merge_context": "._context",
    "ContextFilter": "._context",
    # lifecycle
    "flush_all": "._lifecycle",
    "aflush_all": "._lifecycle",
    "close_all": "._lifecycle",
    # non-blocking handlers
    "ThreadedHandler": "._engine",
    "HandlerStatistics": "._pending",
    "FileHandler": "._sink",
    "RotatingFileHandler": "._sink",
    "TimedRotatingFileHandler": "._sink",
    "WatchedFileHandler": "._sink",
    "StreamHandler": "._sink",
    # network handlers
    "AsyncNetworkHandler": "._net",
    "NetworkHandlerStatistics": "._net",
    "SocketHandler": "._net",
    "DatagramHandler": "._net",
    "SysLogHandler": "._syslog",
    "HTTPHandler": "._http",
    "SMTPHandler": "._mail",
    "MemoryHandler": "._mail",
    # wire format
    "record_to_dict": "._records",
    "dict_to_record": "._records",
    "loads_record": "._records",
    "dumps_record": "._records",
    "open_log_receiver": "._receiver",
    "LogReceiver": "._receiver",
    "ReceiverStatistics": "._receiver",
    # structured logging
    "configure": "._structured",
    "get_logger": "._structured",
    "JSONRenderer": "._structured",
    "structured_formatter": "._structured",
    # configuration files
    "dict_config": "._config",
    "file_config": "._config",
    "toml_config": "._config",
    # child processes
    "child_logging_config": "._children",
    "child_logging_env": "._children",
    "install_child_forwarding": "._children",
    "ChildForwardingHandler": "._children",
    "stop_child_listener": "._children",
    # loop lag
    "monitor_loop_lag": "._lag",
    "LoopLagMonitor": "._lag",
    "LagStatistics": "._lag",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'anycore.logging' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from ._children import (
        ChildForwardingHandler as ChildForwardingHandler,
        child_logging_config as child_logging_config,
        child_logging_env as child_logging_env,
        install_child_forwarding as install_child_forwarding,
        stop_child_listener as stop_child_listener,
    )
    from ._config import (
        dict_config as dict_config,
        file_config as file_config,
        toml_config as toml_config,
    )
    from ._context import (
        ContextFilter as ContextFilter,
        bind_context as bind_context,
        current_context as current_context,
        merge_context as merge_context,
    )
    from ._http import HTTPHandler as HTTPHandler
    from ._lag import (
        LagStatistics as LagStatistics,
        LoopLagMonitor as LoopLagMonitor,
        monitor_loop_lag as monitor_loop_lag,
    )
    from ._lifecycle import (
        aflush_all as aflush_all,
        close_all as close_all,
        flush_all as flush_all,
    )
    from ._mail import MemoryHandler as MemoryHandler, SMTPHandler as SMTPHandler
    from ._net import (
        AsyncNetworkHandler as AsyncNetworkHandler,
        DatagramHandler as DatagramHandler,
        NetworkHandlerStatistics as NetworkHandlerStatistics,
        SocketHandler as SocketHandler,
    )
    from ._pending import HandlerStatistics as HandlerStatistics
    from ._receiver import (
        LogReceiver as LogReceiver,
        ReceiverStatistics as ReceiverStatistics,
        open_log_receiver as open_log_receiver,
    )
    from ._records import (
        dict_to_record as dict_to_record,
        dumps_record as dumps_record,
        loads_record as loads_record,
        record_to_dict as record_to_dict,
    )
    from ._sink import (
        FileHandler as FileHandler,
        RotatingFileHandler as RotatingFileHandler,
        StreamHandler as StreamHandler,
        ThreadedHandler as ThreadedHandler,
        TimedRotatingFileHandler as TimedRotatingFileHandler,
        WatchedFileHandler as WatchedFileHandler,
    )
    from ._structured import (
        JSONRenderer as JSONRenderer,
        configure as configure,
        get_logger as get_logger,
        structured_formatter as structured_formatter,
    )
    from ._syslog import SysLogHandler as SysLogHandler
