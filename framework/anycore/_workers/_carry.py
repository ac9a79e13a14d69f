"""The context carried into other workers: the worker id, contextvars.

Threads and tasks see every contextvar of their caller (a pool copies the
caller's context per job).  A process gets a *snapshot* instead, taken at
submission: structlog's contextvars (what ``bind_contextvars`` set) and the
variables registered with :func:`carry_context_var`, when their values pickle.
The child sets them again before the job runs (:func:`restore_snapshot`),
importing the registering module by name to find a variable it has not seen.

The worker id itself (``_core._state.WORKER_ID``) is set by each backend in
its workers, and a snapshot leaves it out: a job sees the id of the worker
running it.

Rejected: carrying every contextvar of the context (a ContextVar does not
pickle: the child finds the same variable only through the module defining
it, which registration names).
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import pickle
import sys
from contextvars import ContextVar
from typing import Any, TypeVar

from .._core._state import WORKER_ID

__all__ = [
    "Snapshot",
    "carry_context_var",
    "context_snapshot",
    "current_worker_id",
    "picklable_snapshot",
    "restore_snapshot",
]

T = TypeVar("T")
log = logging.getLogger("anycore.child")


# The registered variables: name -> (the module defining it, the variable).
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
            pickle.dumps(item[3], pickle.HIGHEST_PROTOCOL)
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
                    # The user's module that registered the variable (never
                    # one of anycore's: WORKER_ID is not carried).
                    importlib.import_module(module)
                except Exception:
                    continue
                entry = _CARRIED.get(name)
            if entry is not None:
                entry[1].set(value)
    if bind:
        # Imported only now: structlog takes ~50 ms to import, and most
        # snapshots carry none of its variables.
        from structlog.contextvars import bind_contextvars

        bind_contextvars(**bind)
