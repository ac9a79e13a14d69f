"""Structured logging: one pipeline for structlog and stdlib loggers.

Owns :func:`configure`, :func:`get_logger`, the JSON renderer and the
bound-logger class anycore installs into structlog.

The pipeline: processors that merge context (``structlog.contextvars`` and
anycore's :func:`~._context.bind_context`), add level, logger name and
timestamp, then render (JSON - orjson when installed - or console).  stdlib
records enter the same chain through structlog's ``ProcessorFormatter``
(``foreign_pre_chain``), so both kinds of logger produce the same lines into
the same handlers, and stdlib levels, hierarchy, filters and handlers keep
their meaning.  Rendering happens on the caller's thread (the loop); the
handlers' writer threads only write bytes (PERFORMANCE.md, Logging).

Fast path: structlog loggers check the stdlib logger's ``isEnabledFor`` first
(disabled levels cost a method call and a dict lookup).  When every handler
on the way up the logger hierarchy is one of anycore's text sinks with the
formatter :func:`configure` installed, and no logger on the way has filters,
the rendered line goes straight to those sinks without building a
``LogRecord`` - the stdlib machinery would produce the same bytes, only
slower.  Anything else (a filter, a foreign handler, a network handler)
takes the stdlib route.  Rejected: ``make_filtering_bound_logger`` alone (one
global level: the logger hierarchy's levels would be lost) and rendering in
the writer thread (GIL bursts stall the loop).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any, Literal

import structlog
from structlog.stdlib import ProcessorFormatter
from structlog.typing import EventDict, Processor, WrappedLogger

from . import _lifecycle
from ._context import ContextFilter, _component_context, _context as _context_var
from ._sink import (
    FileHandler,
    Overflow,
    RotatingFileHandler,
    StreamHandler,
    ThreadedHandler,
    TimedRotatingFileHandler,
)

__all__ = ["JSONRenderer", "configure", "get_logger", "structured_formatter"]

_orjson: Any
try:  # an optional C-accelerated serializer
    import orjson as _orjson  # type: ignore[import-not-found, no-redef, unused-ignore]
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None


class JSONRenderer:
    """Render the event dict as one JSON line (orjson when installed).

    Values JSON cannot hold are rendered with ``repr``.

    Args:
        sort_keys: sort the keys (stdlib json only; orjson keeps insertion order).
    """

    def __init__(self, sort_keys: bool = False) -> None:
        self.sort_keys = sort_keys
        self._dumps = json.JSONEncoder(default=repr, sort_keys=sort_keys).encode

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        if _orjson is not None and not self.sort_keys:
            try:
                return str(_orjson.dumps(event_dict, default=repr).decode())
            except TypeError:
                pass
        return self._dumps(event_dict)


# -- the structlog side -------------------------------------------------------

_state_version = 0  # bumped by configure() and handler changes it makes


class _Target:
    """What structlog wraps: a stdlib logger plus the fast-path decision."""

    __slots__ = ("_fast", "_snapshot", "_version", "name", "stdlib")

    def __init__(self, name: str) -> None:
        self.name = name
        self.stdlib = logging.getLogger(name)
        self._version = -1
        self._fast: list[ThreadedHandler] | None = None
        self._snapshot: list[tuple[Any, ...]] = []

    def fast_sinks(self) -> list[ThreadedHandler] | None:
        """The sinks a rendered line may go to directly, or None (stdlib route).

        Re-checked on every call against a snapshot of the hierarchy (handler
        lists, filters, propagate, parents), so changes made with the stdlib
        API take effect at once.
        """
        if self._version == _state_version and _snapshot_valid(self._snapshot):
            return self._fast
        self._fast, self._snapshot = _fast_sinks_for(self.stdlib)
        self._version = _state_version
        return self._fast

    def _route(self, level: int, args: Any, kw: Any) -> None:
        # structlog calls the level methods below with the final processor's
        # output: a rendered line (fast path) or (event_dict,) + extra.
        if len(args) == 1 and type(args[0]) is str:
            text = args[0]
            for handler in self._fast or ():
                if level >= handler.level:
                    handler.put(handler._prepare_text(text))
        else:
            kw.setdefault("stacklevel", 4)
            self.stdlib.log(level, *args, **kw)

    def debug(self, *args: Any, **kw: Any) -> None:
        self._route(logging.DEBUG, args, kw)

    def info(self, *args: Any, **kw: Any) -> None:
        self._route(logging.INFO, args, kw)

    def warning(self, *args: Any, **kw: Any) -> None:
        self._route(logging.WARNING, args, kw)

    def error(self, *args: Any, **kw: Any) -> None:
        self._route(logging.ERROR, args, kw)

    def critical(self, *args: Any, **kw: Any) -> None:
        self._route(logging.CRITICAL, args, kw)


def _snapshot_valid(snapshot: list[tuple[Any, ...]]) -> bool:
    # (logging.disable() needs no check: isEnabledFor ran first.)
    for lg, handlers, n_handlers, n_filters, propagate, parent in snapshot:
        if (
            lg.handlers is not handlers
            or len(handlers) != n_handlers
            or len(lg.filters) != n_filters
            or lg.propagate is not propagate
            or lg.parent is not parent
            or lg.disabled
        ):
            return False
    return True


def _fast_sinks_for(
    logger: logging.Logger,
) -> tuple[list[ThreadedHandler] | None, list[tuple[Any, ...]]]:
    sinks: list[ThreadedHandler] | None = []
    snapshot: list[tuple[Any, ...]] = []
    current: logging.Logger | None = logger
    while current is not None:
        snapshot.append(
            (
                current,
                current.handlers,
                len(current.handlers),
                len(current.filters),
                current.propagate,
                current.parent,
            )
        )
        if current.filters or current.disabled:
            sinks = None
        for handler in current.handlers:
            if sinks is not None and (
                not isinstance(handler, ThreadedHandler)
                or not getattr(handler, "_accepts_text", False)
                or handler.formatter is not _formatter
                or any(not isinstance(f, ContextFilter) for f in handler.filters)
            ):
                sinks = None
            if sinks is not None:
                sinks.append(handler)  # type: ignore[arg-type]
        if not current.propagate:
            break
        current = current.parent
    return sinks, snapshot


class BoundLogger(structlog.BoundLoggerBase):
    """structlog bound logger honouring stdlib levels before any processing.

    ``log.info("event", key=value)``; ``%``-style positional arguments are
    merged into the event, as with stdlib loggers.
    """

    _logger: _Target

    def _log(self, level: int, method: str, event: Any, args: tuple[Any, ...], kw: Any) -> Any:
        target = self._logger
        if not target.stdlib.isEnabledFor(level):
            return None
        if args:
            event = event % args
        if not target.fast_sinks():
            # A filter, a foreign handler, or no handler at all (the stdlib's
            # lastResort then applies): the stdlib route keeps every meaning.
            return self._proxy_to_logger(_STDLIB_METHOD[level], event, _anycore_stdlib=True, **kw)
        return self._proxy_to_logger(_STDLIB_METHOD[level], event, **kw)

    def debug(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        """Log at DEBUG."""
        return self._log(logging.DEBUG, "debug", event, args, kw)

    def info(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        """Log at INFO."""
        return self._log(logging.INFO, "info", event, args, kw)

    def warning(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        """Log at WARNING."""
        return self._log(logging.WARNING, "warning", event, args, kw)

    warn = warning

    def error(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        """Log at ERROR."""
        return self._log(logging.ERROR, "error", event, args, kw)

    def critical(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        """Log at CRITICAL."""
        return self._log(logging.CRITICAL, "critical", event, args, kw)

    fatal = critical

    def exception(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        """Log at ERROR with the current exception."""
        kw.setdefault("exc_info", True)
        return self._log(logging.ERROR, "error", event, args, kw)

    def log(self, level: int, event: Any = None, *args: Any, **kw: Any) -> Any:
        """Log at a numeric ``level``."""
        level = _nearest_level(level)
        return self._log(level, _STDLIB_METHOD[level], event, args, kw)

    def is_enabled_for(self, level: int) -> bool:
        """Whether a record at ``level`` would be processed (stdlib semantics)."""
        return self._logger.stdlib.isEnabledFor(level)

    @property
    def name(self) -> str:
        """The logger's name (the stdlib logger it maps to)."""
        return self._logger.name


_STDLIB_METHOD = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


def _nearest_level(level: int) -> int:
    for known in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if level >= known:
            return known
    return logging.DEBUG


def _target_factory(*args: Any) -> _Target:
    if args and isinstance(args[0], str):
        return _Target(args[0])
    frame = sys._getframe(2)
    return _Target(frame.f_globals.get("__name__", "root"))


class _AnycoreBasics:
    """merge_context + add_log_level + add_logger_name + StackInfoRenderer, in one call.

    The same results as those four structlog processors in a row; one Python
    call per record instead of four is measurable on the loop.
    """

    def __init__(self) -> None:
        self._stack = structlog.processors.StackInfoRenderer(additional_ignores=["anycore.logging"])

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        for ctx in (_context_var.get(), _component_context()):
            if ctx:
                for key, value in ctx.items():
                    if key not in event_dict:
                        event_dict[key] = value
        event_dict["level"] = _METHOD_TO_LEVEL.get(name, name)
        record = event_dict.get("_record")
        event_dict["logger"] = logger.name if record is None else record.name
        if "stack_info" in event_dict:
            return self._stack(logger, name, event_dict)
        return event_dict


_METHOD_TO_LEVEL = {"warn": "warning", "exception": "error"}


def _connection_extra(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    # The drivers pass the connection's context as the record extra
    # ``anycore_connection`` (a line logged from a timer runs outside the
    # handler's context); it becomes the same top-level keys the context
    # gives, never a second, nested copy.
    conn = event_dict.pop("anycore_connection", None)
    if conn:
        for key, value in conn.items():
            event_dict.setdefault(key, value)
    return event_dict


def _format_exc_info(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    # structlog's format_exc_info, skipped cheaply when there is nothing to do.
    if "exc_info" in event_dict:
        return structlog.processors.format_exc_info(logger, name, event_dict)
    return event_dict


def _finalize(renderer: Processor) -> Processor:
    wrap = ProcessorFormatter.wrap_for_formatter

    def finalize(logger: WrappedLogger, name: str, event_dict: EventDict) -> Any:
        if event_dict.pop("_anycore_stdlib", False):
            return wrap(logger, name, event_dict)
        return renderer(logger, name, event_dict)

    return finalize


def get_logger(name: str | None = None, **initial_values: Any) -> Any:
    """A structlog logger that maps to the stdlib logger ``name``.

    Args:
        name: the stdlib logger name (default: the caller's module).
        **initial_values: context bound to the returned logger.

    Returns:
        A :class:`BoundLogger` once :func:`configure` ran, otherwise
        whatever structlog is configured to return.
    """
    if name is None:
        name = sys._getframe(1).f_globals.get("__name__", "root")
    if _formatter is None:
        return structlog.get_logger(name, **initial_values)
    # Built directly (no lazy proxy, which re-binds on every call); the
    # processor list is shared and updated in place by configure().
    return BoundLogger(_Target(name), _processors, dict(initial_values))


# -- configure ------------------------------------------------------------------

_formatter: ProcessorFormatter | None = None
_processors: list[Processor] = []
_installed: list[logging.Handler] = []
_lock = threading.Lock()


def configure(
    level: int | str = "INFO",
    format: Literal["console", "json"] = "console",
    *,
    file: str | os.PathLike[str] | None = None,
    rotate: Mapping[str, Any] | None = None,
    stream: IO[str] | Literal[False] | None = None,
    handlers: Iterable[logging.Handler] = (),
    loggers: Mapping[str, int | str] | None = None,
    processors: Sequence[Processor] = (),
    timestamp: str | None = "iso",
    utc: bool = True,
    colors: bool | None = None,
    queue_size: int = 100_000,
    overflow: Overflow = "block",
    capture_warnings: bool = True,
) -> list[logging.Handler]:
    """Set up structlog and stdlib logging as one non-blocking pipeline.

    Replaces the root handlers a previous ``configure()`` installed (other
    root handlers are kept), then installs anycore handlers rendering with
    one shared :class:`structlog.stdlib.ProcessorFormatter`.

    Args:
        level: the root level (name or number).
        format: ``"console"`` (structlog's ConsoleRenderer) or ``"json"``
            (one JSON object per line).
        file: also write to this file (non-blocking :class:`FileHandler`).
        rotate: rotate ``file``: ``{"max_bytes": N, "backup_count": K}`` by
            size, or ``{"when": "midnight", "interval": 1, "backup_count": K}``
            by time.
        stream: a text stream to write to; default ``sys.stderr`` when no
            ``file`` is given; ``False`` for none.
        handlers: more handlers to attach to the root; their formatter is
            replaced by the shared one.
        loggers: per-logger levels, e.g. ``{"asyncio": "WARNING"}``.
        processors: extra processors run after the built-in ones and before
            rendering (plain, fast callables).
        timestamp: ``"iso"``, a strftime format, or None for no timestamp.
        utc: timestamps in UTC.
        colors: console colours (default: when the stream is a terminal).
        queue_size: the record bound of the handlers created here (they are
            also bounded to 16 MiB of pending bytes).
        overflow: what their full buffer does: ``"block"`` (the default, lossless:
            the caller writes), ``"drop_oldest"`` or ``"drop_newest"``.
        capture_warnings: route :mod:`warnings` through logging.

    Returns:
        The root handlers installed by this call.

    Raises:
        ValueError: an unknown ``format`` or ``rotate`` specification.
    """
    global _state_version
    if isinstance(level, str):
        name = level
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            raise ValueError(
                f"unknown level {name!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL (or a number)"
            )
    out_stream: IO[str] | None
    if stream is False:
        out_stream = None
    elif stream is None:
        out_stream = sys.stderr if file is None else None
    else:
        out_stream = stream
    if colors is None:
        isatty = getattr(out_stream, "isatty", None)
        colors = bool(isatty and isatty()) and file is None
    formatter = structured_formatter(
        format, processors=processors, timestamp=timestamp, utc=utc, colors=colors
    )

    new_handlers: list[logging.Handler] = []
    if file is not None:
        new_handlers.append(_file_handler(file, rotate, queue_size, overflow))
    elif rotate is not None:
        raise ValueError("rotate needs file=")
    if out_stream is not None:
        new_handlers.append(StreamHandler(out_stream, queue_size=queue_size, overflow=overflow))
    new_handlers.extend(handlers)

    with _lock:
        root = logging.getLogger()
        old = list(_installed)
        for handler in old:
            root.removeHandler(handler)
        for handler in new_handlers:
            handler.setFormatter(formatter)
            if not any(isinstance(f, ContextFilter) for f in handler.filters):
                handler.addFilter(ContextFilter())
            root.addHandler(handler)
        root.setLevel(level)
        for name, lvl in (loggers or {}).items():
            logging.getLogger(name).setLevel(lvl.upper() if isinstance(lvl, str) else lvl)
        _installed[:] = new_handlers
        _state_version += 1
    if capture_warnings:
        logging.captureWarnings(True)
    for handler in old:
        if handler not in new_handlers:
            handler.close()
    return new_handlers


def structured_formatter(
    format: Literal["console", "json"] = "console",
    *,
    processors: Sequence[Processor] = (),
    timestamp: str | None = "iso",
    utc: bool = True,
    colors: bool = False,
) -> ProcessorFormatter:
    """Build the shared formatter and point structlog at the same pipeline.

    :func:`configure` calls this; dictConfig / fileConfig / TOML setups name
    it as a formatter factory (``"()": "anycore.logging.structured_formatter"``)
    to get the same rendering for stdlib and structlog records.

    Args:
        format: ``"console"`` or ``"json"``.
        processors: extra processors, run before rendering.
        timestamp: ``"iso"``, a strftime format, or None.
        utc: timestamps in UTC.
        colors: console colours.

    Returns:
        The :class:`structlog.stdlib.ProcessorFormatter` to set on handlers.

    Raises:
        ValueError: an unknown ``format``.
    """
    global _formatter, _state_version
    if format not in ("console", "json"):
        raise ValueError("format must be 'console' or 'json'")

    shared: list[Processor] = [structlog.contextvars.merge_contextvars, _AnycoreBasics()]
    if timestamp is not None:
        shared.append(structlog.processors.TimeStamper(fmt=timestamp, utc=utc))
    shared.extend(processors)

    renderer: Processor
    if format == "json":
        renderer = JSONRenderer()
        tail: list[Processor] = [_format_exc_info]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
        tail = []

    formatter = ProcessorFormatter(
        processors=[ProcessorFormatter.remove_processors_meta, *tail, renderer],
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _connection_extra],
    )

    with _lock:
        _formatter = formatter
        _lifecycle.structlog_configured = True
        _state_version += 1
        _processors[:] = [*shared, *tail, _finalize(renderer)]
        structlog.configure(
            processors=_processors,
            wrapper_class=BoundLogger,
            logger_factory=_target_factory,
            context_class=dict,
            cache_logger_on_first_use=True,
        )
    return formatter


def _file_handler(
    file: str | os.PathLike[str],
    rotate: Mapping[str, Any] | None,
    queue_size: int,
    overflow: Overflow,
) -> ThreadedHandler:
    if rotate is None:
        return FileHandler(file, queue_size=queue_size, overflow=overflow)
    spec = dict(rotate)
    if "max_bytes" in spec:
        return RotatingFileHandler(
            file,
            maxBytes=int(spec.pop("max_bytes")),
            backupCount=int(spec.pop("backup_count", 5)),
            queue_size=queue_size,
            overflow=overflow,
            **_check_empty(spec),
        )
    if "when" in spec:
        return TimedRotatingFileHandler(
            file,
            when=str(spec.pop("when")),
            interval=int(spec.pop("interval", 1)),
            backupCount=int(spec.pop("backup_count", 7)),
            utc=bool(spec.pop("utc", False)),
            queue_size=queue_size,
            overflow=overflow,
            **_check_empty(spec),
        )
    raise ValueError("rotate needs 'max_bytes' (size) or 'when' (time)")


def _check_empty(spec: dict[str, Any]) -> dict[str, Any]:
    if spec:
        raise ValueError(f"unknown rotate options: {sorted(spec)}")
    return spec
