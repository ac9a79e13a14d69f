"""Logging context bound by anycore's components: a ContextVar and its readers.

Owns the one :class:`~contextvars.ContextVar` that servers, supervisors and
pools bind their context into (peer address, connection id, program name,
worker id ...), the :func:`bind_context` context manager that sets it, the
structlog processor that merges it into event dicts and the stdlib filter that
copies it onto :class:`logging.LogRecord` objects.

This module imports neither structlog nor anything async, so core modules can
call ``bind_context`` without paying structlog's import time.  Rejected:
binding straight into ``structlog.contextvars`` (would import structlog in
every core module) and thread-locals (lost across tasks).  The value is an
immutable mapping replaced on every bind, so a task that copies the context
(``asyncio.create_task`` does) sees a snapshot that later binds elsewhere do
not change.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from .._core._state import WORKER_ID, connection_context

__all__ = ["ContextFilter", "bind_context", "current_context", "merge_context"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("anycore_log_context", default=_EMPTY)


@contextlib.contextmanager
def bind_context(**values: Any) -> Iterator[Mapping[str, Any]]:
    """Bind ``values`` into the logging context for the body of the block.

    Every record logged in the block (and in tasks started from it, which copy
    the context) carries these keys, through structlog and through stdlib
    loggers configured by :func:`anycore.logging.configure`.  Blocks nest; the
    inner values win and the outer ones come back at the end of the block.

    Args:
        **values: the keys to bind, e.g. ``peer="127.0.0.1:5000", conn_id=7``.

    Returns:
        A context manager yielding the whole context now in force.
    """
    merged = dict(_context.get())
    merged.update(values)
    frozen = MappingProxyType(merged)
    token = _context.set(frozen)
    try:
        yield frozen
    finally:
        _context.reset(token)


def current_context() -> Mapping[str, Any]:
    """The logging context in force in this task or thread (read-only)."""
    return _context.get()


def _component_context() -> dict[str, Any] | None:
    """Context that anycore's components keep in their own ContextVars.

    The connection drivers set ``connection_id`` and ``peer`` on every entry
    into handler code, and pool workers set their id, in the leaf module
    ``anycore._core._state``; reading them here keeps those hot paths free of
    logging work, and loads neither networking nor processes.
    """
    found: dict[str, Any] | None = None
    conn = connection_context.get()
    if conn:
        found = dict(conn)
    worker = WORKER_ID.get()
    if worker is not None:
        if found is None:
            found = {}
        found["worker_id"] = worker
    return found


def merge_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: add the bound context; keys already set win.

    Besides what :func:`bind_context` bound, this adds what anycore's
    components know about the running code: ``connection_id`` and ``peer``
    inside a connection's handler, ``worker_id`` inside a pool worker.

    Args:
        logger: unused (structlog's processor signature).
        method_name: unused.
        event_dict: the event being processed.

    Returns:
        ``event_dict`` with the context's keys it did not have.
    """
    for ctx in (_context.get(), _component_context()):
        if ctx:
            for key, value in ctx.items():
                if key not in event_dict:
                    event_dict[key] = value
    return event_dict


class ContextFilter(logging.Filter):
    """stdlib filter that copies the bound context onto each record.

    Attach it to a handler (not a logger) so that records of every logger get
    the attributes, as ``LoggerAdapter(extra=...)`` would add them.  Existing
    record attributes are never overwritten.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        attrs = record.__dict__
        for ctx in (_context.get(), _component_context()):
            if ctx:
                for key, value in ctx.items():
                    if key not in attrs:
                        attrs[key] = value
        return True
