"""Structured log capture: every record as a dict, with its context.

:func:`capture_logs` collects what is logged in its block, through stdlib
``logging`` and through structlog alike, as plain dicts: ``event`` (the
message), ``level``, ``logger``, then the context in force where the record
was made - what :func:`anycore.logging.bind_context` bound, what a
connection's driver knows (``connection_id``, ``peer``), structlog's
``contextvars`` - and the record's own ``extra`` keys.  Tests then assert on
keys, not on rendered text.

The dict is built when the record is made, in the task or thread that made
it, so the context is the caller's.  structlog events are captured by
swapping structlog's processors for the block, the way
``structlog.testing.capture_logs`` does (loggers cached before the block keep
their old processors: keep ``cache_logger_on_first_use`` off in tests).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

__all__ = ["LogCapture", "capture_logs"]

# LogRecord attributes that are not the user's extra keys.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class LogCapture:
    """The records captured by :func:`capture_logs`, as dicts, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(list(self.records))

    def add(self, record: dict[str, Any]) -> None:
        """Append one record (thread-safe)."""
        with self._lock:
            self.records.append(record)

    @property
    def events(self) -> list[str]:
        """The ``event`` (message) of every record."""
        return [str(r.get("event")) for r in self]

    def find(self, **match: Any) -> list[dict[str, Any]]:
        """The records whose keys have the given values (``level="error"``)."""
        return [r for r in self if all(k in r and r[k] == v for k, v in match.items())]

    def clear(self) -> None:
        """Forget what was captured so far."""
        with self._lock:
            self.records.clear()


def _context() -> dict[str, Any]:
    """The context in force here: structlog's contextvars, then anycore's."""
    import structlog.contextvars

    found: dict[str, Any] = dict(structlog.contextvars.get_contextvars())
    from ..logging._context import merge_context

    merge_context(None, "", found)
    return found


class _Handler(logging.Handler):
    def __init__(self, capture: LogCapture, level: int) -> None:
        super().__init__(level)
        self._capture = capture

    def emit(self, record: logging.LogRecord) -> None:
        try:
            item: dict[str, Any] = {
                "event": record.getMessage(),
                "level": record.levelname.lower(),
                "logger": record.name,
            }
            for key, value in record.__dict__.items():
                if key not in _RECORD_ATTRS and key not in item:
                    item[key] = value
            connection = item.pop("anycore_connection", None)
            for key, value in (connection or {}).items():
                item.setdefault(key, value)
            for key, value in _context().items():
                item.setdefault(key, value)
            if record.exc_info and record.exc_info[1] is not None:
                item["exc_info"] = record.exc_info[1]
            self._capture.add(item)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def capture_logs(level: int | str = logging.DEBUG, logger: str = "") -> Iterator[LogCapture]:
    """Capture what is logged in the block as dicts (see :class:`LogCapture`).

    Example::

        with capture_logs() as logs:
            ...
        assert logs.find(level="error", connection_id=handler.connection_id)

    Args:
        level: the lowest level captured (stdlib loggers below it are lowered
            to it for the block).
        logger: the stdlib logger to listen on (default: the root logger,
            so every logger).
    """
    capture = LogCapture()
    numeric = logging.getLevelName(level) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    target = logging.getLogger(logger)
    handler = _Handler(capture, numeric)
    old_level = target.level
    target.addHandler(handler)
    if target.getEffectiveLevel() > numeric:
        target.setLevel(numeric)
    with _capture_structlog(capture):
        try:
            yield capture
        finally:
            target.removeHandler(handler)
            target.setLevel(old_level)


@contextlib.contextmanager
def _capture_structlog(capture: LogCapture) -> Iterator[None]:
    import structlog

    def record(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        item: dict[str, Any] = {"event": event_dict.pop("event", None), "level": method_name}
        item.update(event_dict)
        for key, value in _context().items():
            item.setdefault(key, value)
        capture.add(item)
        raise structlog.DropEvent

    old = structlog.get_config()
    structlog.configure(processors=[record], cache_logger_on_first_use=False)
    try:
        yield
    finally:
        structlog.configure(
            processors=old["processors"],
            cache_logger_on_first_use=old["cache_logger_on_first_use"],
        )
